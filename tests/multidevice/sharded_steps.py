"""Run with 8 fake CPU devices: a train step sharded over data=2 x fsdp=2 x tensor=2 (by the
logical-axis rules) equals the single-device step, for the DFlash SFT step and the Draft-OPD step
(rollout, replay and update).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/sharded_steps.py sft|opd
Prints the largest differences and exits non-zero if they exceed the tolerance.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from draftopd_jax.models import ModelConfig, dflash, init_params
from draftopd_jax.models.drafters import DFlashDrafter
from draftopd_jax.opd import update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.parallel import sharding
from draftopd_jax.sft import dflash_loss
from draftopd_jax.training import trainer

assert jax.device_count() == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
CFG = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
TARGET = init_params(CFG, seed=3)
D_CFG = dflash.DFlashConfig.for_target(CFG, num_layers=2, block_size=4, mask_token_id=63)
OPT = trainer.make_optimizer(1e-2, warmup_steps=1, total_steps=10)
rng = np.random.default_rng(0)
if sys.argv[1] == "sft":
  STEP = dflash_loss.step_fn(cfg=D_CFG, target_cfg=CFG, optimizer=OPT, num_anchors=4,
                                gamma=0.0, distill=False)
  mask = jnp.asarray(np.arange(24)[None].repeat(8, 0) >= 6)  # response tokens
  BATCHES = [(jnp.asarray(rng.integers(0, 63, (8, 24)), jnp.int32), mask) for _ in range(3)]
else:
  STEP = update_step.opd_step_fn(drafter=DFlashDrafter(D_CFG), target_cfg=CFG, optimizer=OPT,
                              rollout=update_step.RolloutOptions(max_new_tokens=10),
                              loss=LossOptions())
  mask = jnp.asarray(np.arange(6)[None] >= rng.integers(0, 4, (8, 1)))  # left-padded prompts
  BATCHES = [(jnp.asarray(rng.integers(1, 60, (8, 6)), jnp.int32), mask) for _ in range(3)]


def run(step_fn, state, target):
  losses = []
  for batch in BATCHES:
    state, metrics = step_fn(state, target, *batch)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


fresh_state = lambda: trainer.init_state(dflash.init_params(D_CFG), OPT, 0)
single_losses, single_params = run(jax.jit(STEP), fresh_state(), TARGET)
mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
step, state, target = trainer.shard_step(STEP, mesh, fresh_state(), TARGET)
specs = {s.spec for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, (state, target)))}
for spec in (P(None, "fsdp", "tensor"), P(None, "tensor", "fsdp"), P("tensor", "fsdp")):
  assert spec in specs, f"{spec} missing from {specs}"  # stacked q/k/v, o/down, embedding
sharded_losses, sharded_params = run(step, state, target)

loss_gap = max(abs(a - b) for a, b in zip(single_losses, sharded_losses))
param_gap = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(single_params), jax.tree.leaves(sharded_params)))
print(f"losses {single_losses} vs {sharded_losses}; max param diff {param_gap:.2e}")
sys.exit(0 if loss_gap < 1e-5 and param_gap < 1e-5 else 1)
