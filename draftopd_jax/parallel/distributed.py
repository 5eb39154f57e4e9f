"""Joining a multi-process (multi-host) run before any JAX computation.

Explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`) serve local
multi-process runs and GPU clusters; without them, SLURM's environment (several tasks) and TPU
pods (several workers) are detected by `jax.distributed.initialize` itself. One process alone
does nothing. On CPU, cross-process collectives go through gloo.
"""

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def in_multiprocess_environment() -> bool:
  """SLURM with several tasks, or a TPU VM that is one worker of several."""
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
  tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm or tpu_pod


def initialize(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0
               ) -> None:
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} is not in [0, --num_processes="
                       f"{num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif in_multiprocess_environment():
    jax.distributed.initialize()


def host_copy(tree):
  """The whole of every array in `tree` as numpy on this host, also when the arrays are split
  across the processes of a multi-process run (every process must call it)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def whole(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if not x.is_fully_replicated:  # gather: replicate over the array's own mesh
      x = jax.jit(lambda a: a, out_shardings=NamedSharding(x.sharding.mesh, PartitionSpec()))(x)
    return np.asarray(x.addressable_data(0))

  return jax.tree.map(whole, tree)


def barrier(name: str = "draftopd") -> None:
  """Waits for every process of a multi-process run (nothing to wait for in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
