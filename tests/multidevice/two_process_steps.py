"""One process of a two-process run: 3 Draft-OPD steps of a DFlash drafter, on a tiny model over
a data=2 x fsdp=2 mesh of 2 CPU devices per process; each process feeds only its own batch rows.
Process 0 saves the losses and final drafter params to OUT.npz, for comparison with the
single-device run of the same steps on the same batches (sharded_steps.py). (Multi-process SFT
is tested end to end: tests/test_preemption.py runs the quick SFT job as 2 processes.)

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/multidevice/two_process_steps.py \
      OUT 2 PROCESS_ID PORT
"""

import sys

import jax
import numpy as np
from tiny import CFG, D_CFG, OPT, TARGET_SEED, opd_batches, opd_step

from draftopd_jax.models import dflash, init_params
from draftopd_jax.parallel import distributed, sharding
from draftopd_jax.training import trainer

out, num_processes, process_id, port = sys.argv[1], *map(int, sys.argv[2:])
distributed.initialize(f"localhost:{port}", num_processes, process_id)
assert jax.device_count() == 4 and jax.process_count() == num_processes
step_fn, batches = opd_step(), opd_batches()

mesh = sharding.make_mesh(data=2, fsdp=2)
rules = sharding.DEFAULT_RULES
rows = sharding.process_rows(mesh, rules, 8)
assert rows.stop - rows.start == 8 // num_processes
step, state, target = trainer.shard_step(step_fn, mesh,
                                        trainer.init_state(dflash.init_params(D_CFG), OPT, 0),
                                        init_params(CFG, seed=TARGET_SEED))
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
