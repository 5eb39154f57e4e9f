"""Multi-device checks run in subprocesses with fake CPU devices (the flag must be set before
JAX starts, so they cannot share this process), and a real two-process run."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent


def with_devices(count: int) -> dict[str, str]:
  """This process's environment, the test run's XLA flags kept, with `count` fake CPU devices."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
  return dict(os.environ, XLA_FLAGS=flags.strip())


def run_with_8_devices(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(HERE / "multidevice" / script), *args],
                        env=with_devices(8), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
  """One 8-device process for the sharded SFT and OPD steps, the pod configs and the split
  regeneration (one JAX start, shared programs); its single-device OPD run is the two-process
  run's reference."""
  reference = tmp_path_factory.mktemp("eight_devices") / "single"
  return run_with_8_devices("sharded_steps.py", str(reference)), reference


def check_line(result: subprocess.CompletedProcess, kind: str) -> str:
  lines = [line for line in result.stdout.splitlines() if line.startswith(f"{kind}:")]
  assert lines, result.stdout + result.stderr[-3000:]
  return lines[0]


def test_sharded_sft_step_equals_single_device(eight_devices):
  line = check_line(eight_devices[0], "sft")
  assert "max param diff" in line and line.endswith(" ok"), line


def test_sharded_opd_step_equals_single_device(eight_devices):
  line = check_line(eight_devices[0], "opd")
  assert "max param diff" in line and line.endswith(" ok"), line


def test_expert_parallel_opd_step_on_a_moe_target_equals_single_device(eight_devices):
  """data x expert x tensor: the experts of the Qwen3-MoE target split over "expert"."""
  line = check_line(eight_devices[0], "moe-opd")
  assert "max param diff" in line and line.endswith(" ok"), line


def test_pod_configs_shard_their_targets_and_lower(eight_devices):
  """Qwen3-8B (fsdp=8) and Qwen3-30B-A3B (expert=8): split 8 ways, the steps lower."""
  result = eight_devices[0]
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  for line in ("lowered:", "qwen3_8b_pod opd lowered:", "qwen3_30b_a3b_pod opd lowered:",
               "qwen3_30b_a3b_pod target: 56.87 GiB, 7.13 GiB per device"):
    assert line in result.stdout, result.stdout


def test_regeneration_split_over_devices_equals_one_device(eight_devices):
  result = eight_devices[0]
  assert "regeneration split over 8 devices: identical" in result.stdout, (
      result.stdout + result.stderr[-3000:])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, eight_devices):
  """Two real JAX processes (gloo collectives over loopback), each feeding only its own batch
  rows of a 4-device mesh, train exactly as one device does: 3 Draft-OPD steps, compared with the
  single-device run of sharded_steps.py. (SFT as 2 processes: test_preemption.py's two-process
  job.)"""
  script = str(HERE / "multidevice" / "two_process_steps.py")
  port = free_port()
  jobs = [subprocess.Popen([sys.executable, script, str(tmp_path / "two"), "2", str(i), str(port)],
                           env=with_devices(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
          for i in range(2)]
  outputs = [job.communicate(timeout=600)[0] for job in jobs]
  assert all(job.returncode == 0 for job in jobs), "\n".join(o[-2000:] for o in outputs)
  assert "rows 0:4" in outputs[0] and "rows 4:8" in outputs[1]  # each process fed only its half
  one, two = np.load(f"{eight_devices[1]}.npz"), np.load(tmp_path / "two.npz")
  assert set(one.files) == set(two.files) and len(one.files) > 5
  for name in one.files:
    np.testing.assert_allclose(two[name], one[name], atol=1e-5, err_msg=name)
