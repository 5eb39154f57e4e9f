"""Train state, optimizer and the jitted SFT step, plus held-out acceptance length.

The step is a pure function of (state, batch): AdamW with linear warmup and cosine decay,
global-norm gradient clipping, gradients only for the drafter (the target is an input, frozen).
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from draftopd_jax.decoding import engine
from draftopd_jax.evaluation import metrics
from draftopd_jax.models import ModelConfig
from draftopd_jax.parallel import sharding
from draftopd_jax.training import dflash_sft, eagle3_sft


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # a raw uint32 key, so orbax saves it as a plain array


def make_optimizer(learning_rate: float, warmup_steps: int, total_steps: int,
                   weight_decay: float = 0.01, grad_clip: float = 1.0,
                   final_lr_fraction: float = 0.1) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1),
      end_value=learning_rate * final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(schedule, weight_decay=weight_decay))


def init_state(params: dict, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=jax.random.PRNGKey(seed))


def _dflash_step(state: TrainState, target_params: dict, tokens_BxT: jax.Array,
                 loss_mask_BxT: jax.Array, *, cfg, target_cfg: ModelConfig,
                 optimizer: optax.GradientTransformation, num_anchors: int, gamma: float,
                 distill: bool) -> tuple[TrainState, dict]:
  rng, key = jax.random.split(state.rng)
  grad_fn = jax.value_and_grad(dflash_sft.loss_fn, has_aux=True)
  (_, step_metrics), grads = grad_fn(state.params, cfg, target_cfg, target_params, tokens_BxT,
                                     loss_mask_BxT, key, num_anchors=num_anchors, gamma=gamma,
                                     distill=distill)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics["grad_norm"] = optax.global_norm(grads)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), step_metrics


_STEP_STATICS = ("cfg", "target_cfg", "optimizer", "num_anchors", "gamma", "distill")
dflash_train_step = jax.jit(_dflash_step, static_argnames=_STEP_STATICS,
                            donate_argnames=("state",))
dflash_train_step.__doc__ = "One DFlash SFT step on the default device (see `sharded_dflash_step`)."


def _eagle3_step(state: TrainState, target_params: dict, d2t_Vd: jax.Array, tokens_BxT: jax.Array,
                 loss_mask_BxT: jax.Array, *, cfg, target_cfg: ModelConfig,
                 optimizer: optax.GradientTransformation, ttt_steps: int, ttt_decay: float
                 ) -> tuple[TrainState, dict]:
  """EAGLE-3 SFT step; `state.params` holds the trainable weights, `d2t_Vd` stays fixed."""

  def loss(model_params):
    return eagle3_sft.loss_fn({"model": model_params, "d2t": d2t_Vd}, cfg, target_cfg,
                              target_params, tokens_BxT, loss_mask_BxT, steps=ttt_steps,
                              decay=ttt_decay)

  (_, step_metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics["grad_norm"] = optax.global_norm(grads)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                    rng=state.rng), step_metrics


eagle3_train_step = jax.jit(_eagle3_step, static_argnames=("cfg", "target_cfg", "optimizer",
                                                           "ttt_steps", "ttt_decay"),
                            donate_argnames=("state",))


def sharded_dflash_step(mesh: Mesh, state: TrainState, target_params: dict, **statics):
  """The same step under `jax.jit` with explicit shardings on `mesh` (today's pjit): drafter
  params and optimizer state split over "fsdp", the target over "tensor", batch rows over
  ("data", "fsdp"), the state donated."""
  state_sharding = TrainState(step=sharding.replicated(mesh),
                              params=sharding.param_shardings(mesh, state.params),
                              opt_state=sharding.param_shardings(mesh, state.opt_state),
                              rng=sharding.replicated(mesh))
  target_sharding = sharding.param_shardings(mesh, target_params, axis="tensor")
  rows = sharding.batch_sharding(mesh)
  return jax.jit(functools.partial(_dflash_step, **statics),
                 in_shardings=(state_sharding, target_sharding, rows, rows),
                 out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)


def heldout_tau(target_cfg: ModelConfig, target_params: dict, drafter, drafter_params,
                prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray, max_new_tokens: int,
                eos_ids: tuple[int, ...]) -> float:
  """Macro tau of greedy speculative decoding on a fixed held-out batch."""
  state = engine.run(target_cfg, target_params, prompt_BxP, prompt_mask_BxP, drafter=drafter,
                     drafter_params=drafter_params, max_new_tokens=max_new_tokens,
                     eos_ids=eos_ids)
  return metrics.summarize(metrics.acceptance_lengths(state.trace), drafter.block_size)["tau"]
