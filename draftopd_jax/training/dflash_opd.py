"""Draft-OPD for DFlash: replay the rollout's blocks with gradients and score the two streams.

The frozen target runs once over the committed sequences (the teacher pass): its hidden states
are the drafter's context, its log-probs the teacher of the response stream. One drafter forward
then re-drafts every planned block in parallel (the block mask of `dflash.block_logits`: a block
sees the context strictly before its anchor). Because a DFlash block depends only on that
context and its anchor token, replay at a recorded anchor reproduces the rollout's logits.
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp

from draftopd_jax.models import KVCache, ModelConfig, dflash, forward
from draftopd_jax.training import opd_losses
from draftopd_jax.training.anchor_plan import AnchorPlan


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """How the two streams are scored (digest §2.5); hashable, a static argument of the step."""
  estimator: str = "sampled"  # "sampled" (the code's surrogates) or "full" (full-vocab KLs)
  aggregation: str = "pooled"  # "pooled" (the code) or "mean_of_means" (the paper)
  response_direction: str = "forward"  # "reverse" = the all-reverse ablation
  rejected_direction: str = "reverse"  # "forward" = the all-forward ablation
  gamma: float = 0.8  # rejected-stream weights gamma^(offset-1)
  decay: bool = True  # False = the no-decay ablation
  response_lambda: float = 1.0
  rejected_lambda: float = 1.0

  def __post_init__(self):
    for name, value, allowed in (
        ("estimator", self.estimator, ("sampled", "full")),
        ("aggregation", self.aggregation, ("pooled", "mean_of_means")),
        ("response_direction", self.response_direction, ("forward", "reverse")),
        ("rejected_direction", self.rejected_direction, ("forward", "reverse"))):
      if value not in allowed:
        raise ValueError(f"loss.{name}={value!r}; choose one of {allowed}")


@flax.struct.dataclass
class TeacherPass:
  features_BxSxFxD: jax.Array  # target hidden states at the drafter's layers
  logprobs_BxSxV: jax.Array  # log p(next token | prefix), temperature 1


def teacher_pass(cfg: dflash.DFlashConfig, target_cfg: ModelConfig, target_params: dict,
                 tokens_BxS: jax.Array) -> TeacherPass:
  b, s = tokens_BxS.shape
  positions_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
  out = forward(target_cfg, target_params, tokens_BxS, positions_BxS,
                KVCache.create(target_cfg, b, s), cfg.target_layer_ids)
  return TeacherPass(jax.lax.stop_gradient(out.hidden_BxTxFxD),
                     jax.lax.stop_gradient(jax.nn.log_softmax(out.logits_BxTxV.astype(jnp.float32))))


def replay_logprobs(drafter_params: dict, cfg: dflash.DFlashConfig, target_cfg: ModelConfig,
                    target_params: dict, tokens_BxS: jax.Array, anchor_pos_BxN: jax.Array,
                    features_BxSxFxD: jax.Array) -> jax.Array:
  """Drafter log-probs [B, N, K-1, V] of slots 1..K-1 of the blocks anchored at `anchor_pos_BxN`."""
  b, s = tokens_BxS.shape
  positions_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
  cache = dflash.write_context(cfg, drafter_params, dflash.ContextCache.create(cfg, b, s),
                               features_BxSxFxD, positions_BxS)
  anchor_tokens_BxN = jnp.take_along_axis(tokens_BxS, anchor_pos_BxN, axis=1)
  logits_BxNxKxV = dflash.block_logits(cfg, drafter_params, target_cfg, target_params,
                                       anchor_tokens_BxN, anchor_pos_BxN, cache)
  return jax.nn.log_softmax(logits_BxNxKxV[:, :, 1:].astype(jnp.float32), axis=-1)


def _pick(logprobs_xV: jax.Array, tokens_x: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logprobs_xV, tokens_x[..., None], axis=-1)[..., 0]


def loss_fn(drafter_params: dict, cfg: dflash.DFlashConfig, target_cfg: ModelConfig,
            target_params: dict, tokens_BxS: jax.Array, plan: AnchorPlan, teacher: TeacherPass,
            options: LossOptions, verify_logprobs_BxNxK1xV: jax.Array | None = None
            ) -> tuple[jax.Array, dict]:
  """The Draft-OPD loss of one rollout batch, and diagnostics.

  `verify_logprobs_BxNxK1xV` (the target's full distributions of the verify pass, recorded by the
  rollout) is needed by the full-vocabulary estimator on the rejected stream only.
  """
  b, s = tokens_BxS.shape
  k = cfg.block_size
  student_BxNxK1xV = replay_logprobs(drafter_params, cfg, target_cfg, target_params, tokens_BxS,
                                     plan.anchor_pos_BxN, teacher.features_BxSxFxD)
  full = options.estimator == "full"

  # Response stream: offset k predicts the committed token at anchor + k.
  label_pos_BxNxK1 = jnp.minimum(plan.anchor_pos_BxN[..., None] + jnp.arange(1, k), s - 1)
  flat = lambda x: x.reshape(b, -1)
  labels_BxNxK1 = jnp.take_along_axis(tokens_BxS, flat(label_pos_BxNxK1), axis=1
                                      ).reshape(label_pos_BxNxK1.shape)
  teacher_rows_BxNxK1xV = jnp.take_along_axis(
      teacher.logprobs_BxSxV, flat(label_pos_BxNxK1 - 1)[..., None], axis=1
  ).reshape(student_BxNxK1xV.shape)
  response_loss = opd_losses.token_loss(
      options.response_direction, options.estimator, _pick(teacher_rows_BxNxK1xV, labels_BxNxK1),
      _pick(student_BxNxK1xV, labels_BxNxK1), teacher_rows_BxNxK1xV if full else None,
      student_BxNxK1xV if full else None)
  response_weight = plan.response_BxNxK1.astype(jnp.float32)

  # Rejected stream: the drafter's own proposals, teacher log-probs from the verify pass.
  rejected_tokens = plan.rejected_token_BxNxK1
  rejected_loss = opd_losses.token_loss(
      options.rejected_direction, options.estimator, plan.rejected_logprob_BxNxK1,
      _pick(student_BxNxK1xV, rejected_tokens), verify_logprobs_BxNxK1xV,
      student_BxNxK1xV if full else None)
  rejected_weight = plan.rejected_BxNxK1 * opd_losses.position_weights(k, options.gamma,
                                                                       options.decay)
  loss = opd_losses.combine(response_loss, response_weight, rejected_loss, rejected_weight,
                            aggregation=options.aggregation,
                            response_lambda=options.response_lambda,
                            rejected_lambda=options.rejected_lambda)
  return loss, diagnostics(plan, student_BxNxK1xV, labels_BxNxK1, response_loss, rejected_loss)


def diagnostics(plan: AnchorPlan, student_BxNxK1xV: jax.Array, labels_BxNxK1: jax.Array,
                response_loss: jax.Array, rejected_loss: jax.Array) -> dict:
  """Stream means, the make-up of the replayed tokens and how well replay matches the rollout."""
  k1 = plan.rejected_BxNxK1.shape[-1]
  offsets = jnp.arange(1, k1 + 1)
  first = plan.first_rejected_BxN[..., None]
  response, rejected = plan.response_BxNxK1, plan.rejected_BxNxK1
  accepted = response & ((first == 0) | (offsets < first))
  first_rejected = rejected & (offsets == first)
  suffix = rejected & (offsets > first)
  replayed = jnp.maximum(jnp.sum(response | rejected), 1)
  mean = lambda x, m: jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1)
  argmax_BxNxK1 = jnp.argmax(student_BxNxK1xV, axis=-1)
  return {
      "response_loss": mean(response_loss, response), "rejected_loss": mean(rejected_loss, rejected),
      "response_tokens": jnp.sum(response), "rejected_tokens": jnp.sum(rejected),
      "share_accepted": jnp.sum(accepted) / replayed,
      "share_first_rejected": jnp.sum(first_rejected) / replayed,
      "share_rejected_suffix": jnp.sum(suffix) / replayed,
      "response_accuracy": mean(argmax_BxNxK1 == labels_BxNxK1, response),
      # The replayed drafter's greedy tokens equal the rejected proposals it drafted in the
      # rollout (1.0 when replay is exact and the weights have not moved).
      "replay_agreement": mean(argmax_BxNxK1 == plan.rejected_token_BxNxK1, rejected),
  }
