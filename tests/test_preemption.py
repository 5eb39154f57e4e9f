"""Preemption, crashes and multi-process runs of the real target's quick SFT job, on cached
target features (the online path is the EAGLE-3 job's and the NaN test's): SIGTERM checkpoints
and exits with the requeue code, kill -9 and damaged latest checkpoints resume to the
uninterrupted result, and two processes train as one. The runs after the first share its
regenerated responses (and, but for the two-process run, its feature cache)."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_sft_job import tensorboard_scalars

from draftopd_jax.io.drafter_checkpoint import load_drafter
from draftopd_jax.training import preemption

pytestmark = pytest.mark.slow

# Long enough that a signal sent after the first step lands mid-run. The quick config saves every
# 2 steps and keeps 3: 4, 6 and 8, so 2 can be damaged and one stays intact.
STEPS = 8
ROOT = pathlib.Path(__file__).resolve().parents[1]


def command(workdir: pathlib.Path) -> list[str]:
  # Held-out tau only at the start and the end, on 1 short prompt and 4 tokens (inprocess.py's
  # TINY_HELDOUT): it is logged and saved as in a full run, but its value is not what these tests
  # check (it took a third of a job). Of the first 4 training prompts, the 3 within 64 tokens, in
  # 96-token sequences (the quick job: 14 of 16 within 192, in 224): 8 steps of 2 still cycle
  # through them, and regenerating and caching features for 14 took 25 s.
  return [sys.executable, "-m", "draftopd_jax.main", "--config=configs/sft.py:quick",
          f"--workdir={workdir}", f"--config.train.steps={STEPS}", "--config.eval_every=100",
          "--config.data.num_prompts=4", "--config.data.max_prompt_tokens=64",
          "--config.data.seq_len=96", "--config.heldout.datasets=('mtbench',)",
          "--config.heldout.num_prompts=1", "--config.heldout.max_new_tokens=4",
          "--config.data.feature_cache=True", f"--config.data.feature_cache_dir={workdir}/features"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run(workdir: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(command(workdir), capture_output=True, text=True, timeout=900)


def copy(source: pathlib.Path, workdir: pathlib.Path, *names: str) -> None:
  for name in names:
    shutil.copytree(source / name, workdir / name)


def start(workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(condition, process: subprocess.Popen, timeout: float = 600) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, f"the job ended early: {process.communicate()[1][-2000:]}"
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.05)


def logged_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return []
  return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def saved_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory, smollm) -> tuple[pathlib.Path, dict]:
  """An uninterrupted run: its workdir and final drafter params."""
  workdir = tmp_path_factory.mktemp("reference")
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir, load_drafter(workdir / "drafter", smollm.cfg)[1]


def test_a_run_logs_metrics_tensorboard_and_drafters(reference):
  workdir = reference[0]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  assert {"heldout_tau", "train_flops"} <= set(records[0])
  losses = {r["step"]: r["loss"] for r in records if "loss" in r}
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert all(r["train_flops"] > 0 for r in records if "loss" in r)
  assert all(r["flops_target_forward"] == 0 for r in records if "loss" in r)  # cached features
  [cache] = (workdir / "features").iterdir()
  examples = len(next((workdir / "data").glob("*.jsonl")).read_text().splitlines())
  assert json.loads((cache / "manifest.json").read_text())["examples"] == examples
  assert (workdir / "best_drafter" / "drafter.json").is_file()
  assert json.loads((workdir / "run_config.json").read_text())["train"]["steps"] == STEPS
  best = json.loads((workdir / "best.json").read_text())  # the final evaluation included
  assert best["heldout_tau"] == max(r["heldout_tau"] for r in records if "heldout_tau" in r)
  logged = tensorboard_scalars(workdir / "tensorboard")
  assert sorted(step for step, _ in logged["loss"]) == sorted(losses)
  assert {"heldout_tau", "accuracy_by_slot/6", "seconds_per_step"} <= set(logged)


def assert_same_drafter(workdir: pathlib.Path, expected: dict, model_cfg) -> None:
  params = load_drafter(workdir / "drafter", model_cfg)[1]
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_sigterm_then_kill_9_resume_to_the_uninterrupted_result(tmp_path, reference, smollm):
  """SIGTERM mid-run: a checkpoint at the step it stopped after, exit 75 (requeue). Restarted, the
  job resumes there and is killed with SIGKILL after its next checkpoint. Restarted again, it
  finishes with the uninterrupted run's drafter, bit for bit."""
  ref_dir, ref_params = reference
  copy(ref_dir, tmp_path, "data", "features")
  job = start(tmp_path)
  wait_for(lambda: logged_steps(tmp_path), job)
  job.send_signal(signal.SIGTERM)
  _, stderr = job.communicate(timeout=600)
  assert job.returncode == preemption.EXIT_CODE, stderr[-2000:]
  line = stderr.strip().splitlines()[-1]
  assert line.startswith("preempted: stopped by SIGTERM after step ")
  stopped_at = int(line.split("after step ")[1].split(";")[0])
  assert 0 < stopped_at < STEPS - 4 and saved_steps(tmp_path)[-1] == stopped_at

  job = start(tmp_path)
  wait_for(lambda: saved_steps(tmp_path)[-1] > stopped_at, job)
  job.kill()
  stdout, _ = job.communicate()
  assert f"resumed from step {stopped_at}" in stdout
  resumed = run(tmp_path)
  assert resumed.returncode == 0 and "resumed from step" in resumed.stdout, resumed.stderr[-2000:]
  assert_same_drafter(tmp_path, ref_params, smollm.cfg)


def test_damaged_latest_checkpoints_are_skipped(tmp_path, reference, smollm):
  """The latest checkpoint's files truncated, the one before's corrupted: both are skipped with a
  warning, and the job resumes from the third and ends with the uninterrupted run's drafter."""
  ref_dir, ref_params = reference
  copy(ref_dir, tmp_path, "data", "features", "checkpoints")
  *_, intact, corrupted, truncated = saved_steps(tmp_path)
  for step, damage in ((truncated, lambda blob: blob[:len(blob) // 2]),
                       (corrupted, lambda blob: bytes(b ^ 0x5A for b in blob))):
    for path in (tmp_path / "checkpoints" / str(step) / "state").rglob("*"):
      if path.is_file() and path.stat().st_size > 0:
        path.write_bytes(damage(path.read_bytes()))
  resumed = run(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"warning: checkpoint {truncated} " in resumed.stderr
  assert f"warning: checkpoint {corrupted} " in resumed.stderr
  assert f"resumed from step {intact}" in resumed.stdout
  assert_same_drafter(tmp_path, ref_params, smollm.cfg)


def test_two_process_job_equals_one_process(tmp_path, reference, smollm):
  """The same job as 2 processes (1 CPU device each, gloo over loopback): each feeds its half of
  every batch, process 0 alone writes metrics, and the drafter equals the 1-process run's. The
  suite's end-to-end test of multi-process SFT (test_multidevice.py's two processes run OPD)."""
  ref_dir, ref_params = reference
  copy(ref_dir, tmp_path, "data")  # not the features: process 0 builds them, the other waits
  # The job's flags after --config, without held-out tau: its programs compiled in both processes
  # took a third of this run, and the engine across processes is two_process_steps.py's test.
  flags = [flag.replace("('mtbench',)", "()") for flag in command(tmp_path)[4:]]
  result = subprocess.run(["bash", "launch/local.sh", "--processes", "2", "--devices", "1",
                           "--port", str(free_port()), "configs/sft.py:quick", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count(f"done: step {STEPS}") == 2  # both processes finished the job
  params = load_drafter(tmp_path / "drafter", smollm.cfg)[1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), params, ref_params)
  assert logged_steps(tmp_path) == logged_steps(ref_dir)  # one writer: no duplicated lines
  assert "heldout_tau" not in (tmp_path / "metrics.jsonl").read_text()  # switched off
  assert not (tmp_path / "best_drafter").exists()
