"""Multi-device checks run in subprocesses with fake CPU devices (the flag must be set before
JAX starts, so they cannot share this process), and a real two-process run."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def run_with_8_devices(script: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.run([sys.executable, str(HERE / "multidevice" / script), *args], env=env,
                        capture_output=True, text=True, timeout=600)


def test_sharded_sft_step_equals_single_device():
  result = run_with_8_devices("sharded_steps.py", "sft")
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert "max param diff" in result.stdout


def test_pod_config_shards_a_qwen3_8b_target_and_lowers():
  result = run_with_8_devices("pod_config.py")
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert "lowered:" in result.stdout and "opd lowered:" in result.stdout


def test_sharded_opd_step_equals_single_device():
  result = run_with_8_devices("sharded_steps.py", "opd")
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert "max param diff" in result.stdout


def test_regeneration_split_over_devices_equals_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, str(HERE / "multidevice" / "sharded_regeneration.py")],
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert "identical" in result.stdout


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  """Two real JAX processes (gloo collectives over loopback), each feeding only its own batch
  rows, train exactly as one process over the same 4-device mesh: 3 Draft-OPD steps. (SFT as 2
  processes: test_preemption.py's two-process job.)"""
  script = str(HERE / "multidevice" / "two_process_steps.py")

  def start(devices: int, out: str, processes: int, process_id: int, port: int):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, script, str(tmp_path / out), str(processes),
                             str(process_id), str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

  port = free_port()
  jobs = [start(4, "one", 1, 0, 0)] + [start(2, "two", 2, i, port) for i in range(2)]
  outputs = [job.communicate(timeout=600)[0] for job in jobs]
  assert all(job.returncode == 0 for job in jobs), "\n".join(o[-2000:] for o in outputs)
  assert "rows 0:4" in outputs[1] and "rows 4:8" in outputs[2]  # each process fed only its half
  one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
  assert set(one.files) == set(two.files) and len(one.files) > 5
  for name in one.files:
    np.testing.assert_allclose(two[name], one[name], atol=1e-5, err_msg=name)
