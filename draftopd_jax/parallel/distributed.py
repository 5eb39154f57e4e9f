"""Joining a multi-process (multi-host) run before any JAX computation.

Explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`) serve local
multi-process runs and GPU clusters; without them, SLURM's environment (several tasks) and TPU
pods (several workers) are detected by `jax.distributed.initialize` itself. One process alone
does nothing. On CPU, cross-process collectives go through gloo.
"""

import os

import jax


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
