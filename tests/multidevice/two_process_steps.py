"""One process of a multi-process run (or the whole run): 3 Draft-OPD steps of a DFlash drafter,
on a tiny model over a data=2 x fsdp=2 mesh of 4 CPU devices in all; each process feeds only its
own batch rows. Process 0 saves the losses and final drafter params to OUT.npz. (Multi-process
SFT is tested end to end: tests/test_preemption.py runs the quick SFT job as 2 processes.)

  XLA_FLAGS=--xla_force_host_platform_device_count=D python tests/multidevice/two_process_steps.py \
      OUT NUM_PROCESSES PROCESS_ID PORT
with D x NUM_PROCESSES = 4 (the test runs 1 x 4 and 2 x 2 and compares).
"""

import sys

import jax
import numpy as np

from draftopd_jax.models import ModelConfig, dflash, init_params
from draftopd_jax.models.drafters import DFlashDrafter
from draftopd_jax.opd import update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.parallel import distributed, sharding
from draftopd_jax.training import trainer

out, num_processes, process_id, port = sys.argv[1], *map(int, sys.argv[2:])
if num_processes > 1:
  distributed.initialize(f"localhost:{port}", num_processes, process_id)
assert jax.device_count() == 4 and jax.process_count() == num_processes

CFG = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
D_CFG = dflash.DFlashConfig.for_target(CFG, num_layers=2, block_size=4, mask_token_id=63)
OPT = trainer.make_optimizer(1e-2, warmup_steps=1, total_steps=10)

step_fn = update_step.opd_step_fn(drafter=DFlashDrafter(D_CFG), target_cfg=CFG, optimizer=OPT,
                                  rollout=update_step.RolloutOptions(max_new_tokens=10),
                                  loss=LossOptions())
rng = np.random.default_rng(0)  # the same batches on every process
mask = np.arange(6)[None] >= rng.integers(0, 4, (8, 1))  # left-padded prompts
batches = [(rng.integers(1, 60, (8, 6)).astype(np.int32), mask) for _ in range(3)]

mesh = sharding.make_mesh(data=2, fsdp=2)
rules = sharding.DEFAULT_RULES
rows = sharding.process_rows(mesh, rules, 8)
assert rows.stop - rows.start == 8 // num_processes
step, state, target = trainer.shard_step(
    step_fn, mesh, trainer.init_state(dflash.init_params(D_CFG), OPT, 0), init_params(CFG, seed=3))
losses = []
for batch in batches:
  state, metrics = step(state, target, *(sharding.host_batch(mesh, rules, x[rows], 8)
                                         for x in batch))
  losses.append(float(metrics["loss"]))
params = distributed.host_copy(state.params)
if process_id == 0:
  np.savez(f"{out}.npz", losses=np.asarray(losses), **{
      jax.tree_util.keystr(path): leaf
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)})
print(f"process {process_id} opd: rows {rows.start}:{rows.stop}, losses {losses}")
