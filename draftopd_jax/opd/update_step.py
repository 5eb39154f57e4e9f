"""One Draft-OPD update as a single jitted function of (state, target, prompts):

rollout (the engine's prefill + `while_loop` with the current drafter, recording the target's
features and log-probs: the teacher) -> anchor plan from the trace -> replay of all planned blocks
with gradients -> two-stream loss -> AdamW update. With `rollouts_per_update` R > 1 the
prompt batch is split into R rollout batches whose gradients are averaged into one update; all
of them are drafted with the weights the update starts from (policy lag 0 updates).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from draftopd_jax.decoding import engine
from draftopd_jax.models import ModelConfig
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.opd import anchor_plan, replay
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.sampling import SamplingConfig
from draftopd_jax.training import trainer

# Metrics that add up over the rollout batches of an update (the others are averaged).
COUNTS = ("first_rejection_histogram", "rollout_tokens", "response_tokens", "rejected_tokens")


@dataclasses.dataclass(frozen=True)
class RolloutOptions:
  max_new_tokens: int
  eos_ids: tuple[int, ...] = ()
  sampling: SamplingConfig = SamplingConfig()  # greedy by default, as the paper's rollouts
  anchors: str = "error"  # "error" (the rollout's block starts) or "random" (ablation)
  rejected_stream: bool = True  # False = naive target-assisted rollout (ablation)
  include_correction: bool = True  # the code; False = the paper's partition
  rollouts_per_update: int = 1

  def __post_init__(self):
    if self.anchors not in ("error", "random"):
      raise ValueError(f"rollout.anchors={self.anchors!r}; choose error or random")


def run_rollout(drafter: DFlashDrafter | Eagle3Drafter, drafter_params, target_cfg, target_params,
                prompt_BxP, prompt_mask_BxP, rng, options: RolloutOptions, *,
                record_verify_logprobs: bool = False, record_teacher: bool = False
                ) -> engine.DecodeState:
  statics = dict(max_new_tokens=options.max_new_tokens, sampling=options.sampling,
                 eos_ids=options.eos_ids)
  state = engine.prefill(target_cfg, target_params, drafter, drafter_params, prompt_BxP,
                         prompt_mask_BxP, rng, record_verify_logprobs=record_verify_logprobs,
                         record_teacher=record_teacher, **statics)
  return engine.decode(target_cfg, target_params, drafter, drafter_params, state,
                       jnp.int32(options.max_new_tokens), **statics)


def rollout_metrics(trace: engine.Trace, plan: anchor_plan.AnchorPlan) -> dict:
  """From the trace and its own plan (before any ablation reshapes it)."""
  used_BxN = plan.drafted_BxN
  block_size = plan.proposals_BxNxK1.shape[-1] + 1
  return {
      "rollout_tau": jnp.sum((trace.accepted_BxN + 1) * used_BxN) / jnp.maximum(used_BxN.sum(), 1),
      # Index 0: every proposal accepted; index k: the first rejection at offset k.
      "first_rejection_histogram": jnp.sum((plan.first_rejected_BxN[..., None]
                                            == jnp.arange(block_size))
                                           & used_BxN[..., None], axis=(0, 1)),
      "rollout_steps": jnp.max(trace.num_steps_B),
      "rollout_tokens": jnp.sum(trace.committed_BxN),
  }


def full_params(drafter, trainable: dict, d2t_Vd: jax.Array | None) -> dict:
  """The drafter's parameters from the trained ones (EAGLE-3 keeps its vocabulary map fixed)."""
  return {"model": trainable, "d2t": d2t_Vd} if isinstance(drafter, Eagle3Drafter) else trainable


def rollout_loss(trainable_params, rng, target_params, prompt_BxP, prompt_mask_BxP, *,
                 drafter: DFlashDrafter | Eagle3Drafter, d2t_Vd: jax.Array | None,
                 target_cfg: ModelConfig, rollout: RolloutOptions, loss: LossOptions
                 ) -> tuple[jax.Array, dict]:
  """Rolls out with the drafter (no gradient), then the replayed loss (with gradient)."""
  target_params = jax.lax.stop_gradient(target_params)  # frozen, embedding and LM head included
  rollout_key, plan_key = jax.random.split(rng)
  full = loss.estimator == "full"
  at_verify_steps = rollout.anchors == "error"
  decoded = run_rollout(drafter, full_params(drafter, jax.lax.stop_gradient(trainable_params),
                                             d2t_Vd),
                        target_cfg, target_params, prompt_BxP, prompt_mask_BxP, rollout_key,
                        rollout, record_verify_logprobs=full, record_teacher=at_verify_steps)
  trace = decoded.trace
  plan = anchor_plan.from_trace(trace, drafter.block_size, rollout.include_correction)
  stats = rollout_metrics(trace, plan)
  if not rollout.rejected_stream:
    plan = anchor_plan.without_rejected(plan)
  if at_verify_steps:
    teacher = replay.from_rollout(decoded)
  else:  # random anchors are not verify steps: one more target pass gives their teacher
    plan = anchor_plan.random_anchors(plan, plan_key, decoded.prompt_lens_B, decoded.lengths_B)
    teacher = replay.target_pass(drafter.layer_ids, target_cfg, target_params,
                                     decoded.tokens_BxS, plan.anchor_pos_BxN, drafter.block_size,
                                     full)
    if full:  # the rejected stream, in the second half of the blocks, keeps the verify rows
      n = trace.anchor_pos_BxN.shape[1]
      teacher = teacher.replace(rows_BxNxK1xV=jnp.concatenate(
          [teacher.rows_BxNxK1xV[:, :n], trace.verify_logprobs_BxNxK1xV], axis=1))
  value, metrics = replay.loss_fn(trainable_params, drafter, d2t_Vd, target_cfg,
                                      target_params, decoded.tokens_BxS, plan, teacher, loss)
  return value, {"loss": value, **metrics, **stats}


def _gradients(params: dict, step_key: jax.Array, target_params: dict, prompt_BxP: jax.Array,
               prompt_mask_BxP: jax.Array, *, drafter: DFlashDrafter | Eagle3Drafter,
               d2t_Vd: jax.Array | None, target_cfg: ModelConfig, rollout: RolloutOptions,
               loss: LossOptions) -> tuple[dict, dict]:
  """The mean gradient over `rollouts_per_update` rollouts, each on its slice of the prompts."""
  r = rollout.rollouts_per_update
  grad_fn = jax.value_and_grad(functools.partial(rollout_loss, drafter=drafter, d2t_Vd=d2t_Vd,
                                                 target_cfg=target_cfg, rollout=rollout,
                                                 loss=loss), has_aux=True)
  split = lambda x: x.reshape(r, x.shape[0] // r, *x.shape[1:])

  def one_rollout(_, inputs):
    key, prompt, mask = inputs
    (_, metrics), grads = grad_fn(params, key, target_params, prompt, mask)
    return None, (grads, metrics)

  _, (grads, metrics) = jax.lax.scan(
      one_rollout, None, (jax.random.split(step_key, r), split(prompt_BxP), split(prompt_mask_BxP)))
  grads = jax.tree.map(lambda g: g.mean(0), grads)
  metrics = {name: (value.sum(0) if name in COUNTS else
                    value.max(0) if name == "rollout_steps" else value.mean(0))
             for name, value in metrics.items()}
  return grads, metrics


def opd_step_fn(*, drafter: DFlashDrafter | Eagle3Drafter, target_cfg: ModelConfig,
                optimizer: optax.GradientTransformation, rollout: RolloutOptions,
                loss: LossOptions, d2t_Vd: jax.Array | None = None) -> trainer.StepFn:
  """(state, target_params, prompt_BxP, prompt_mask_BxP) -> (state, metrics); shard it with
  `trainer.shard_step` like the SFT step (prompt rows take the batch sharding). The state holds
  the DFlash weights, or the EAGLE-3 "model" weights with `d2t_Vd` fixed."""
  if isinstance(drafter, Eagle3Drafter) == (d2t_Vd is None):
    raise ValueError("pass d2t_Vd for an EAGLE-3 drafter, and only then")
  return trainer.step_fn(functools.partial(_gradients, drafter=drafter, d2t_Vd=d2t_Vd,
                                           target_cfg=target_cfg, rollout=rollout, loss=loss),
                         optimizer)
