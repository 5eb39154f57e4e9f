"""Train state, optimizer and the one train step that the SFT and Draft-OPD steps share.

A step is a pure function of (state, target params, batch): the job's gradient function, then
AdamW with linear warmup and cosine decay and global-norm gradient clipping. Only the drafter has
gradients (the target is an input, frozen).
"""

import functools
import math
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from draftopd_jax.errors import UserError
from draftopd_jax.parallel import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # a raw uint32 key, so orbax saves it as a plain array


# (state, target_params, *batch) -> (state, metrics); the batch arrays are the SFT step's tokens,
# loss mask[, cached features], the Draft-OPD step's prompts and prompt mask.
StepFn = Callable[..., tuple[TrainState, dict]]
# (params, key, target_params, *batch) -> (loss, metrics)
LossFn = Callable[..., tuple[jax.Array, dict]]
# (params, key, target_params, *batch) -> (gradients of params, metrics)
GradFn = Callable[..., tuple[dict, dict]]


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


def train_step(state: TrainState, target_params: dict, *batch: jax.Array, grad_fn: GradFn,
               optimizer: optax.GradientTransformation) -> tuple[TrainState, dict]:
  """One optimizer update from `grad_fn(params, key, target_params, *batch) -> (grads, metrics)`;
  `key` is fresh per step, split from the state's RNG."""
  rng, key = jax.random.split(state.rng)
  grads, step_metrics = grad_fn(state.params, key, target_params, *batch)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics["grad_norm"] = optax.global_norm(grads)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), step_metrics


def step_fn(grad_fn: GradFn, optimizer: optax.GradientTransformation) -> StepFn:
  return functools.partial(train_step, grad_fn=grad_fn, optimizer=optimizer)


def loss_gradients(loss_fn: LossFn) -> GradFn:
  """The `grad_fn` of a `loss_fn(params, key, target_params, *batch) -> (loss, metrics)`."""

  def grad_fn(params, key, target_params, *batch):
    (_, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, key,
                                                                          target_params, *batch)
    return grads, step_metrics

  return grad_fn


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
