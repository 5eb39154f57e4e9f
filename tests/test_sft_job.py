"""The sft job on the real target: an EAGLE-3 run on chat prompts; TensorBoard read-back (the
DFlash run and its resumption are tested in test_preemption.py)."""

import json
import pathlib

import numpy as np
import pytest
from inprocess import TINY_HELDOUT, run_job
from test_event_file import read_events

from draftopd_jax.data.prompts import is_heldout
from draftopd_jax.io.drafter_checkpoint import load_drafter

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[1]


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """Scalars of TensorBoard event files, read back with their CRCs checked."""
  scalars = {}
  for path in directory.glob("events.out.tfevents.*"):
    for event in read_events(path):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_eagle3_sft_job_on_chat_prompts(tmp_path, smollm):
  from draftopd_jax.models.drafters import Eagle3Drafter

  chats = tmp_path / "chats.jsonl"
  chats.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
      {"role": "user", "content": f"Name a city in country number {i}."},
      {"role": "assistant", "content": "Paris."},
      {"role": "user", "content": "Another one?"}]}) + "\n" for i in range(20)))
  run_job("sft.py:eagle3_quick", tmp_path, data__source=str(chats), data__seq_len=96,
          validation__corpus=str(ROOT / "corpora" / "smollm2-135m-instruct" / "heldout"),
          validation__examples=4, **TINY_HELDOUT)  # the chats and their responses fit in 96 tokens
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
  # The validation loss on held-out corpus answers, at every held-out evaluation (steps 0, 3, 6).
  validation = [r for r in records if "validation_loss" in r]
  assert [r["step"] for r in validation] == [0, 3, 6]
  assert all(np.isfinite(r["validation_loss"]) and len(r["validation_loss_by_step"]) == 3
             for r in validation)
