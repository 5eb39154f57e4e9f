"""The Draft-OPD job on the real target: the SFT warm-up before it, OPD, tau before/after,
checkpoint, plots."""

import json
import pathlib

import numpy as np
import pytest
from inprocess import TINY_HELDOUT, job_config, run_job

from draftopd_jax import main
from draftopd_jax.io.drafter_checkpoint import load_drafter, save_drafter
from draftopd_jax.jobs.new_drafter import new_drafter
from draftopd_jax.models.drafters import DFlashDrafter
from draftopd_jax.training import trainer

pytestmark = pytest.mark.slow


def test_without_a_drafter_the_sft_warmup_runs_first_and_is_reused(tmp_path, monkeypatch):
  """The composition only: the warm-up job itself is the quick SFT job the preemption tests run."""
  jobs = []

  def record(config, workdir):
    jobs.append((config.mode, workdir, config.get("init_from")))
    if config.mode == "sft":  # what the SFT job leaves behind
      (pathlib.Path(workdir) / "drafter").mkdir(parents=True)
      (pathlib.Path(workdir) / "drafter" / "drafter.json").write_text("{}")

  monkeypatch.setattr(main, "run_job", record)
  for _ in range(2):  # the second run finds the warm-up's drafter and starts from it
    main.run_config(job_config("opd.py:quick"), str(tmp_path))
  warmup = str(tmp_path / "sft_warmup")
  start = str(tmp_path / "sft_warmup" / "drafter")
  assert jobs == [("sft", warmup, None), ("opd", str(tmp_path), start), ("opd", str(tmp_path), start)]


def test_quick_opd_job(tmp_path, smollm, capsys):
  """From the warm-up's place in the workdir (an untrained drafter there: the warm-up's training
  is the SFT tests' business), and under a FLOPs budget that ends it before its 4 steps,
  evaluated every 0.2 TFLOP."""
  warmup = job_config("opd.py:quick").warmup
  save_drafter(tmp_path / "sft_warmup" / "drafter", *new_drafter(warmup.drafter, smollm.cfg, 0, None),
               smollm.cfg, smollm.tokenizer)
  budget, every = 0.4e12, 0.2e12
  run_job("opd.py:quick", tmp_path, train__flops_budget=budget, eval_every_flops=every,
          **TINY_HELDOUT)
  stdout = capsys.readouterr().out
  assert "held-out tau before:" in stdout and "held-out tau after:" in stdout
  drafter, _ = load_drafter(tmp_path / "drafter", smollm.cfg)
  assert isinstance(drafter, DFlashDrafter)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  steps = [r for r in records if "loss" in r]
  assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
  assert 2 <= len(steps) < 4 and all(np.isfinite(r["loss"]) for r in steps)
  spent = [0.0] + [r["train_flops"] for r in steps]
  assert spent[-2] < budget <= spent[-1]  # stopped at the first update that reached the budget
  crossings = [s for s in range(1, len(steps)) if trainer.crossed(spent[s - 1], spent[s], every)]
  assert [r["step"] for r in records if "heldout_tau" in r] == [0, *crossings, len(steps)]
  for r in steps:
    shares = r["share_accepted"] + r["share_first_rejected"] + r["share_rejected_suffix"]
    assert abs(shares - 1) < 1e-3 and r["replay_agreement"] > 0.9
    # Every verify step commits at least one token.
    assert 0 < sum(r["first_rejection_histogram"]) <= r["rollout_tokens"]
  assert steps[-1]["train_flops"] > steps[0]["train_flops"] > 0
  assert (tmp_path / "opd_tau.png").stat().st_size > 0
  assert (tmp_path / "opd_diagnostics.png").stat().st_size > 0
  assert (tmp_path / "sft_warmup" / "drafter" / "drafter.json").is_file()
