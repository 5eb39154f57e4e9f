"""Run with 8 fake CPU devices: every 8-device check in one process (one JAX start).

A train step sharded over data=2 x fsdp=2 x tensor=2 (by the logical-axis rules) equals the
single-device step, for the DFlash SFT step and the Draft-OPD step (rollout, replay and update);
so does the Draft-OPD step for a Qwen3-MoE target over data=2 x expert=2 x tensor=2.
The single-device Draft-OPD run's losses and params go to OUT.npz: two_process_steps.py runs the
same steps on the same batches as two processes and is compared with it. Then pod_config.py
and sharded_regeneration.py (one JAX start for every 8-device check).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/sharded_steps.py OUT
Prints one line per step kind ("ok" or "FAILED") and exits non-zero if any exceeds the tolerance.
"""

import pathlib
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from tiny import CFG, D_CFG, MOE_CFG, MOE_D_CFG, OPT, TARGET_SEED, opd_batches, opd_step

from draftopd_jax.models import dflash, init_params
from draftopd_jax.parallel import sharding
from draftopd_jax.sft import dflash_loss
from draftopd_jax.training import trainer

assert jax.device_count() == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
# kind -> (target config, drafter config, mesh, shardings that must occur in the state or target)
KINDS = {
    "sft": (CFG, D_CFG, dict(data=2, fsdp=2, tensor=2),
            (P(None, "fsdp", "tensor"), P(None, "tensor", "fsdp"), P("tensor", "fsdp"))),
    "opd": (CFG, D_CFG, dict(data=2, fsdp=2, tensor=2), ()),
    "moe-opd": (MOE_CFG, MOE_D_CFG, dict(data=2, expert=2, tensor=2),
                (P(None, "expert", None, "tensor"), P(None, "expert", "tensor", None))),
}


def step_and_batches(kind: str):
  if kind != "sft":
    return (opd_step(*KINDS[kind][:2]),
            [tuple(map(jnp.asarray, batch)) for batch in opd_batches()])
  rng = np.random.default_rng(0)
  step = dflash_loss.step_fn(cfg=D_CFG, target_cfg=CFG, optimizer=OPT, num_anchors=4, gamma=0.0,
                             distill=False)
  mask = jnp.asarray(np.arange(24)[None].repeat(8, 0) >= 6)  # response tokens
  return step, [(jnp.asarray(rng.integers(0, 63, (8, 24)), jnp.int32), mask) for _ in range(3)]


def run(step_fn, state, target, batches):
  losses = []
  for batch in batches:
    state, metrics = step_fn(state, target, *batch)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


def check(kind: str) -> tuple[bool, list[float], dict]:
  """Sharded vs single device; returns (within tolerance, single-device losses and params)."""
  target_cfg, drafter_cfg, mesh_shape, expected_specs = KINDS[kind]
  step_fn, batches = step_and_batches(kind)
  target_params = init_params(target_cfg, seed=TARGET_SEED)
  fresh_state = lambda: trainer.init_state(dflash.init_params(drafter_cfg), OPT, 0)
  single_losses, single_params = run(jax.jit(step_fn), fresh_state(), target_params, batches)
  mesh = sharding.make_mesh(**mesh_shape)
  step, state, target = trainer.shard_step(step_fn, mesh, fresh_state(), target_params)
  specs = {s.spec for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, (state, target)))}
  for spec in expected_specs:  # stacked q/k/v, o/down, embedding; stacked experts
    assert spec in specs, f"{spec} missing from {specs}"
  sharded_losses, sharded_params = run(step, state, target, batches)
  loss_gap = max(abs(a - b) for a, b in zip(single_losses, sharded_losses))
  param_gap = max(float(np.abs(a - b).max()) for a, b in
                  zip(jax.tree.leaves(single_params), jax.tree.leaves(sharded_params)))
  ok = loss_gap < 1e-5 and param_gap < 1e-5
  print(f"{kind}: losses {single_losses} vs {sharded_losses}; max param diff {param_gap:.2e} "
        f"{'ok' if ok else 'FAILED'}", flush=True)
  return ok, single_losses, single_params


sft_ok = check("sft")[0]
opd_ok, losses, params = check("opd")
moe_ok = check("moe-opd")[0]
np.savez(f"{sys.argv[1]}.npz", losses=np.asarray(losses), **{
    jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)})
for script in ("pod_config.py", "sharded_regeneration.py"):
  runpy.run_path(str(pathlib.Path(__file__).with_name(script)))
sys.exit(0 if sft_ok and opd_ok and moe_ok else 1)
