"""The sft job on the real target: it runs, and a stopped run resumes to the same result."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from draftopd_jax.data.prompts import is_heldout
from draftopd_jax.io.drafter_checkpoint import load_drafter

pytestmark = pytest.mark.slow


def sft(workdir, *overrides, variant="quick"):
  result = subprocess.run([sys.executable, "-m", "draftopd_jax.main",
                           f"--config=configs/sft.py:{variant}", f"--workdir={workdir}", *overrides],
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  return result


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, smollm):
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  sft(whole)
  shutil.copytree(whole / "data", parts / "data")  # reuse the regenerated responses
  sft(parts, "--config.train.steps=3")
  resumed = sft(parts)
  assert "resumed from step 3" in resumed.stdout

  drafter_a, params_a = load_drafter(whole / "drafter", smollm.cfg)
  drafter_b, params_b = load_drafter(parts / "drafter", smollm.cfg)
  assert drafter_a == drafter_b
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  losses = lambda d: {r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").open())
                      if "loss" in r}
  assert losses(whole) == losses(parts)
  records = [json.loads(line) for line in (whole / "metrics.jsonl").open()]
  assert {"heldout_tau", "train_flops"} <= set(records[0])
  assert all(r["train_flops"] > 0 for r in records if "loss" in r)
  assert (whole / "best_drafter" / "drafter.json").is_file()
  logged = tensorboard_scalars(whole / "tensorboard")
  assert sorted(step for step, _ in logged["loss"]) == sorted(losses(whole))
  assert {"heldout_tau", "accuracy_by_slot/6", "seconds_per_step"} <= set(logged)


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """Scalars of TensorBoard event files, read back frame by frame (length, crc, event, crc)."""
  from tensorboardX.proto.event_pb2 import Event

  scalars = {}
  for path in directory.glob("events.out.tfevents.*"):
    blob, at = path.read_bytes(), 0
    while at < len(blob):
      size = int.from_bytes(blob[at:at + 8], "little")
      event = Event.FromString(blob[at + 12:at + 12 + size])
      at += 12 + size + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_eagle3_sft_job_on_chat_prompts(tmp_path, smollm):
  from draftopd_jax.decoding.drafters import Eagle3Drafter

  chats = tmp_path / "chats.jsonl"
  chats.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
      {"role": "user", "content": f"Name a city in country number {i}."},
      {"role": "assistant", "content": "Paris."},
      {"role": "user", "content": "Another one?"}]}) + "\n" for i in range(20)))
  sft(tmp_path, f"--config.data.source={chats}", variant="eagle3_quick")
  cached = [json.loads(line) for line in next((tmp_path / "data").glob("*.jsonl")).open()]
  texts = [smollm.tokenizer.decode(r["prompt_ids"]) for r in cached]
  assert len(texts) == 16 and all(t.count("Paris.") == 1 for t in texts)  # whole chats
  assert is_heldout("c4", 0.02) and not any("number 4." in t for t in texts)  # never trained on
  drafter, params = load_drafter(tmp_path / "drafter", smollm.cfg)
  assert isinstance(drafter, Eagle3Drafter) and params["d2t"].shape == (2048,)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  steps = [r for r in records if "loss" in r]
  assert len(steps) == 6 and all(len(r["loss_by_step"]) == 3 for r in steps)
  assert all(np.isfinite(r["loss"]) for r in steps)
