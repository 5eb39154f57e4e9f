"""Train state, optimizer and the jitted SFT step, plus held-out acceptance length.

The step is a pure function of (state, batch): AdamW with linear warmup and cosine decay,
global-norm gradient clipping, gradients only for the drafter (the target is an input, frozen).
"""

import functools
import math
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from draftopd_jax.decoding import engine
from draftopd_jax.errors import UserError
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


# (state, target_params, tokens_BxT, loss_mask_BxT[, features_BxTxFxD]) -> (state, metrics)
StepFn = Callable[..., tuple[TrainState, dict]]


def make_optimizer(learning_rate: float, warmup_steps: int, total_steps: int,
                   weight_decay: float = 0.01, grad_clip: float = 1.0,
                   final_lr_fraction: float = 0.1) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1),
      end_value=learning_rate * final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(schedule, weight_decay=weight_decay))


def budget_steps(steps: int, flops_budget: float, flops_per_step: float) -> int:
  """The steps a run of fixed cost per step takes: `steps`, or fewer when a FLOPs budget (> 0)
  is reached first (at the first step that reaches it)."""
  return min(steps, math.ceil(flops_budget / flops_per_step)) if flops_budget > 0 else steps


def crossed(before: float, after: float, every: float) -> bool:
  """Whether going from `before` to `after` (e.g. training FLOPs) passes a multiple of `every`;
  runs evaluated this way meet at the same FLOPs whatever their cost per step."""
  return every > 0 and after // every > before // every


def init_state(params: dict, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=jax.random.PRNGKey(seed))


def _dflash_step(state: TrainState, target_params: dict, tokens_BxT: jax.Array,
                 loss_mask_BxT: jax.Array, features_BxTxFxD: jax.Array | None = None, *, cfg,
                 target_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                 num_anchors: int, gamma: float, distill: bool) -> tuple[TrainState, dict]:
  rng, key = jax.random.split(state.rng)
  grad_fn = jax.value_and_grad(dflash_sft.loss_fn, has_aux=True)
  (_, step_metrics), grads = grad_fn(state.params, cfg, target_cfg, target_params, tokens_BxT,
                                     loss_mask_BxT, key, num_anchors=num_anchors, gamma=gamma,
                                     distill=distill, features_BxTxFxD=features_BxTxFxD)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics["grad_norm"] = optax.global_norm(grads)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), step_metrics


def dflash_step_fn(*, cfg, target_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                   num_anchors: int, gamma: float, distill: bool) -> StepFn:
  return functools.partial(_dflash_step, cfg=cfg, target_cfg=target_cfg, optimizer=optimizer,
                           num_anchors=num_anchors, gamma=gamma, distill=distill)


def _eagle3_step(state: TrainState, target_params: dict, tokens_BxT: jax.Array,
                 loss_mask_BxT: jax.Array, *, d2t_Vd: jax.Array, cfg, target_cfg: ModelConfig,
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


def eagle3_step_fn(*, d2t_Vd: jax.Array, cfg, target_cfg: ModelConfig,
                   optimizer: optax.GradientTransformation, ttt_steps: int,
                   ttt_decay: float) -> StepFn:
  return functools.partial(_eagle3_step, d2t_Vd=d2t_Vd, cfg=cfg, target_cfg=target_cfg,
                           optimizer=optimizer, ttt_steps=ttt_steps, ttt_decay=ttt_decay)


def shard_step(step_fn: StepFn, mesh: Mesh, state: TrainState, target_params: dict,
               rules: sharding.Rules = sharding.DEFAULT_RULES, batch_inputs: int = 2
               ) -> tuple[StepFn, TrainState, dict]:
  """`step_fn` under `jax.jit` with explicit shardings on `mesh` (today's pjit), the state donated;
  returns it with `state` and `target_params` placed on the mesh.

  Drafter params and optimizer state are split by the logical-axis `rules` (FSDP and tensor
  parallelism), the frozen target the same way, the rows of the `batch_inputs` batch arrays (2:
  tokens and loss mask; 3: and cached features) by the "batch" rule.
  """
  state_sharding = sharding.tree_shardings(mesh, rules, state)
  target_sharding = sharding.tree_shardings(mesh, rules, target_params)
  rows = sharding.batch_sharding(mesh, rules)
  step = jax.jit(step_fn, in_shardings=(state_sharding, target_sharding) + (rows,) * batch_inputs,
                 out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  return (step, jax.device_put(state, state_sharding),
          jax.device_put(target_params, target_sharding))


def training_mesh(mesh_config, rules: sharding.Rules, batch_size: int) -> Mesh:
  """The config's mesh, checked against the batch it will split."""
  try:
    mesh = sharding.make_mesh(**mesh_config)
  except ValueError as e:
    raise UserError(str(e)) from None
  rows = sharding.batch_rows_multiple(mesh, rules)
  if batch_size % rows:
    raise UserError(f"batch size {batch_size} must be a multiple of {rows}, the devices of the "
                    "mesh axes that split the batch")
  return mesh


def heldout_tau(target_cfg: ModelConfig, target_params: dict, drafter, drafter_params,
                prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray, max_new_tokens: int,
                eos_ids: tuple[int, ...]) -> float:
  """Macro tau of greedy speculative decoding on a fixed held-out batch."""
  state = engine.run(target_cfg, target_params, prompt_BxP, prompt_mask_BxP, drafter=drafter,
                     drafter_params=drafter_params, max_new_tokens=max_new_tokens,
                     eos_ids=eos_ids)
  return metrics.summarize(metrics.acceptance_lengths(state.trace), drafter.block_size)["tau"]
