"""Multi-device checks run in a subprocess with 8 fake CPU devices (the flag must be set before
JAX starts, so they cannot share this process)."""

import os
import pathlib
import subprocess
import sys

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
