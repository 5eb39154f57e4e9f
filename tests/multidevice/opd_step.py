"""Run with 8 fake CPU devices: the Draft-OPD step (rollout, replay, update) sharded over
data=2 x fsdp=2 x tensor=2 equals the single-device step.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/opd_step.py
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from draftopd_jax.decoding.drafters import DFlashDrafter
from draftopd_jax.models import ModelConfig, dflash, init_params
from draftopd_jax.parallel import sharding
from draftopd_jax.training import opd_step, trainer
from draftopd_jax.training.opd_losses import LossOptions

assert jax.device_count() == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
CFG = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
TARGET = init_params(CFG, seed=3)
D_CFG = dflash.DFlashConfig.for_target(CFG, num_layers=2, block_size=4, mask_token_id=63)
OPT = trainer.make_optimizer(1e-2, warmup_steps=1, total_steps=10)
STEP = opd_step.opd_step_fn(drafter=DFlashDrafter(D_CFG), target_cfg=CFG, optimizer=OPT,
                            rollout=opd_step.RolloutOptions(max_new_tokens=10),
                            loss=LossOptions())
rng = np.random.default_rng(0)
PROMPTS = [jnp.asarray(rng.integers(1, 60, (8, 6)), jnp.int32) for _ in range(3)]
MASK = jnp.asarray(np.arange(6)[None] >= rng.integers(0, 4, (8, 1)))


def run(step_fn, state, target):
  losses = []
  for prompts in PROMPTS:
    state, metrics = step_fn(state, target, prompts, MASK)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


def fresh_state():
  return trainer.init_state(dflash.init_params(D_CFG), OPT, 0)


single_losses, single_params = run(jax.jit(STEP), fresh_state(), TARGET)
mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
step, state, target = trainer.shard_step(STEP, mesh, fresh_state(), TARGET)
sharded_losses, sharded_params = run(step, state, target)
loss_gap = max(abs(a - b) for a, b in zip(single_losses, sharded_losses))
param_gap = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(single_params), jax.tree.leaves(sharded_params)))
print(f"losses {single_losses} vs {sharded_losses}; max param diff {param_gap:.2e}")
sys.exit(0 if loss_gap < 1e-5 and param_gap < 1e-5 else 1)
