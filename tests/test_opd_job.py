"""The Draft-OPD job on the real target: SFT warm-up, OPD, tau before/after, checkpoint, plots."""

import json
import subprocess
import sys

import numpy as np
import pytest

from draftopd_jax.decoding.drafters import DFlashDrafter
from draftopd_jax.io.drafter_checkpoint import load_drafter

pytestmark = pytest.mark.slow


def test_quick_opd_job(tmp_path, smollm):
  result = subprocess.run([sys.executable, "-m", "draftopd_jax.main", "--config=configs/opd.py:quick",
                           f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "held-out tau before:" in result.stdout and "held-out tau after:" in result.stdout
  drafter, _ = load_drafter(tmp_path / "drafter", smollm.cfg)
  assert isinstance(drafter, DFlashDrafter)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  steps = [r for r in records if "loss" in r]
  assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in steps)
  for r in steps:
    shares = r["share_accepted"] + r["share_first_rejected"] + r["share_rejected_suffix"]
    assert abs(shares - 1) < 1e-3 and r["replay_agreement"] > 0.9
    # Every verify step commits at least one token.
    assert 0 < sum(r["first_rejection_histogram"]) <= r["rollout_tokens"]
  assert steps[-1]["train_flops"] > steps[0]["train_flops"] > 0
  assert (tmp_path / "opd_tau.png").stat().st_size > 0
  assert (tmp_path / "opd_diagnostics.png").stat().st_size > 0
  assert (tmp_path / "sft_warmup" / "drafter" / "drafter.json").is_file()
