"""Acceptance metrics, drafter checkpoints, prompt sources and the eval job."""

import json
import math
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from inprocess import job_config, run_job

from draftopd_jax.data.prompts import is_heldout, mtbench_first_turns, sharegpt_prompts
from draftopd_jax.decoding.engine import Trace
from draftopd_jax.errors import UserError
from draftopd_jax.evaluation import metrics, scaling
from draftopd_jax.evaluation.heldout import grouped_heldout_taus
from draftopd_jax.io.drafter_checkpoint import load_drafter, save_drafter
from draftopd_jax.jobs.eval import build_drafter
from draftopd_jax.models import ModelConfig, dflash, eagle3, init_params
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, num_layers=6, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=48)


def test_acceptance_metrics_by_hand():
  trace = Trace.create(batch=2, steps=4, k=4)
  trace = trace.replace(accepted_BxN=jnp.asarray([[3, 0, 1, 9], [2, 2, 0, 0]]),
                        num_steps_B=jnp.asarray([3, 2]))  # the 9 lies past row 0's steps
  lengths = metrics.acceptance_lengths(trace)
  assert [l.tolist() for l in lengths] == [[4, 1, 2], [3, 3]]
  s = metrics.summarize(lengths, block_size=4)
  assert s["tau"] == pytest.approx((7 / 3 + 3) / 2)  # macro: mean of per-response means
  assert s["tau_token_weighted"] == pytest.approx(13 / 5)
  assert s["tau_per_response"] == pytest.approx([7 / 3, 3])
  assert s["length_histogram"] == [1, 1, 2, 1]
  assert s["reach_rate"] == pytest.approx([4 / 5, 3 / 5, 1 / 5])
  assert s["conditional_rate"] == pytest.approx([4 / 5, 3 / 4, 1 / 3])
  assert metrics.speedup([0.1, 0.3], [0.05, 0.05]) == pytest.approx(4.0)


def test_the_stop_rule_projection_by_hand():
  # tau = 0.3 log10(F) - 3 at 1e13 and 1e15 FLOPs, with +-0.01 noise that cancels in the fit.
  fit = scaling.fit_log_flops([(0.0, 1.0), (1e13, 0.91), (1e13, 0.89), (1e15, 1.51), (1e15, 1.49)])
  assert fit.num_points == 4  # the untrained point at 0 FLOPs has no logarithm
  assert (fit.slope, fit.intercept) == pytest.approx((0.3, -3.0))
  assert fit.tau_at(1e16) == pytest.approx(1.8)
  assert fit.flops_for(2.0) == pytest.approx(10 ** (50 / 3))
  assert scaling.LogFlopsFit(-0.1, 3.0, 2).flops_for(2.0) == float("inf")
  with pytest.raises(ValueError, match="two or more FLOP counts"):
    scaling.fit_log_flops([(0.0, 1.0), (1e13, 1.1), (1e13, 1.2)])


def test_project_tau_fits_from_the_named_step_and_reads_the_line_at_the_schedules_end():
  project = runpy.run_path(str(pathlib.Path(__file__).parents[1] / "benchmarks" /
                               "project_tau.py"))["project"]
  # 1e12 FLOPs per step; tau = 0.5 log10(FLOPs) - 5.5 from step 200 on, step 100 off the line.
  records = [{"step": 0, "train_flops": 0.0, "heldout_tau": 1.0},
             {"step": 100, "train_flops": 1e14, "heldout_tau": 1.9},
             {"step": 150, "train_flops": 1.5e14, "loss": 3.0}]
  records += [{"step": s, "train_flops": s * 1e12, "heldout_tau": 0.5 * math.log10(s * 1e12) - 5.5}
              for s in (200, 300, 400)]
  r = project(records, fit_from_step=200, end_step=4000, goal=2.0)
  assert (r["fit_points"], r["last_step"], r["fit_from_flops"]) == (3, 400, 2e14)
  assert r["projected_tau_at_end"] == pytest.approx(0.5 * math.log10(4e15) - 5.5)
  assert r["steps_to_goal"] == pytest.approx(1000)


def test_drafter_checkpoints_round_trip_and_refuse_another_target(tmp_path):
  d_cfg = dflash.DFlashConfig.for_target(CFG, num_layers=2, block_size=4, mask_token_id=3)
  e_cfg = eagle3.Eagle3Config.for_target(CFG, block_size=5, draft_vocab_size=20)
  cases = [(DFlashDrafter(d_cfg), dflash.init_params(d_cfg)),
           (Eagle3Drafter(e_cfg), {"model": eagle3.init_params(e_cfg),
                                   "d2t": jnp.arange(20, dtype=jnp.int32)})]
  for i, (drafter, params) in enumerate(cases):
    save_drafter(tmp_path / str(i), drafter, params, CFG)
    loaded, loaded_params = load_drafter(tmp_path / str(i), CFG)
    assert loaded == drafter
    jax.tree.map(np.testing.assert_array_equal, params, loaded_params)
  with pytest.raises(UserError, match="made for target"):
    load_drafter(tmp_path / "0", CFG.replace(hidden_size=64))
  with pytest.raises(UserError, match="not a drafter checkpoint"):
    load_drafter(tmp_path, CFG)


def test_eval_refuses_a_verify_block_outside_the_drafters_block():
  for bad in (1, 9):
    with pytest.raises(UserError, match="pass 2 to 8, or 0"):
      build_drafter(job_config("eval.py:oracle", drafter__verify_block=bad).drafter, None)


def test_heldout_split_is_deterministic_and_disjoint():
  assert is_heldout("abc", 0.5) == is_heldout("abc", 0.5)
  share = np.mean([is_heldout(f"id{i}", 0.1) for i in range(5000)])
  assert 0.08 < share < 0.12
  heldout, train = sharegpt_prompts("heldout", 20), sharegpt_prompts("train", 300)
  assert len(heldout) == 20 and not set(heldout) & set(train)


def test_mtbench_first_turns():
  turns = mtbench_first_turns(80)
  assert len(turns) == 80 and all(isinstance(t, str) and t for t in turns)


@pytest.mark.slow
# Every prompt set runs at one width (both decoding loops compile once per job); the two runs share
# the three sets out: the oracle (the engine check, tau = K) needs only one. One prompt per set:
# with two, the width was the second ShareGPT prompt's 1,060 tokens, and the prefills at that
# width were most of the suite's longest test.
# The oracle's 24 tokens are three whole blocks (tau = K); the untrained drafter commits about a
# token per step, and each of its tokens costs a verify step (decoding was most of this test).
# The draft-model run has SmolLM2-135M draft for itself, verifying 4 of its 8 slots a step:
# identical output (lossless) and every proposal accepted (tau = 4), through the zoo loader, the
# drafter's own KV cache and a truncated block.
@pytest.mark.parametrize("variant,verify_block,tau,datasets,tokens", [
    ("oracle", 0, 8.0, ("mtbench",), 24), ("dflash", 0, None, ("humaneval", "sharegpt"), 12),
    ("draft_model", 4, 4.0, ("mtbench",), 24)], ids=["oracle", "dflash", "draft_model"])
def test_eval_job_writes_results_and_plots(tmp_path, variant, verify_block, tau, datasets, tokens,
                                           capsys):
  run_job(f"eval.py:{variant}", tmp_path, num_prompts=1, max_new_tokens=tokens, datasets=datasets,
          drafter__verify_block=verify_block)
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["datasets"]) == set(datasets)
  proposals = (verify_block or 8) - 1
  for r in results["datasets"].values():
    assert r["lossless"] and r["num_prompts"] == 1 and r["speedup"] > 0
    assert r["tau_per_response"] == [r["tau"]]
    assert len(r["reach_rate"]) == proposals and sum(r["length_histogram"]) == r["num_steps"]
    if tau:
      assert r["tau"] == tau
  assert (tmp_path / "acceptance_by_position.png").stat().st_size > 1000
  assert (tmp_path / "acceptance_length_hist.png").stat().st_size > 1000
  assert "speedup" in capsys.readouterr().out


def test_paired_bootstrap_by_hand():
  old = {"a": [1.0, 1.2, 1.4, 1.6], "b": [2.0, 2.0]}
  shifted = {"a": [1.1, 1.3, 1.5, 1.7], "b": [2.1, 2.1]}
  r = metrics.paired_bootstrap(shifted, old, num_samples=2000)
  # Every prompt gains exactly 0.1: pairing removes the spread between prompts.
  assert (r["new_tau"], r["old_tau"]) == pytest.approx((1.75, 1.65))
  assert r["difference"] == pytest.approx(0.1)
  assert r["difference_ci95"] == pytest.approx([0.1, 0.1])
  assert r["ratio"] == pytest.approx(1.75 / 1.65)
  assert r["ratio_ci95"][0] <= r["ratio"] <= r["ratio_ci95"][1]
  noisy = metrics.paired_bootstrap({"a": [1.0, 1.6, 1.2, 1.4]}, {"a": [1.2, 1.4, 1.0, 1.6]},
                                   num_samples=2000)
  assert noisy["difference"] == pytest.approx(0.0, abs=1e-12)
  lo, hi = noisy["difference_ci95"]
  assert lo < 0 < hi
  with pytest.raises(ValueError, match="same non-empty prompt sets"):
    metrics.paired_bootstrap({"a": [1.0]}, {"a": [1.0, 2.0]})


def test_grouped_heldout_taus_come_back_in_prompt_order_whatever_the_grouping():
  target = init_params(CFG, seed=1)
  cfg = dflash.DFlashConfig.for_target(CFG, num_layers=1, block_size=4, mask_token_id=0)
  drafter, drafter_params = DFlashDrafter(cfg), dflash.init_params(cfg, seed=2)
  rng = np.random.default_rng(0)
  rows = [rng.integers(1, 64, n).tolist() for n in (9, 3, 40, 5, 17, 3)]
  taus = lambda group_rows: grouped_heldout_taus(CFG, target, drafter, drafter_params, rows,
                                                 pad_id=0, max_new_tokens=24, eos_ids=(),
                                                 group_rows=group_rows)
  one_by_one = taus(1)
  assert len(set(one_by_one)) > 1  # the order is visible in the values
  assert taus(2) == one_by_one  # groups of similar length: (3, 3), (5, 9), (17, 40)
  assert taus(6) == one_by_one  # one batch
