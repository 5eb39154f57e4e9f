"""The paper-reproduction experiment's runner, results tables and GPU launcher, on made-up
metrics (the runs themselves are the branch configs' jobs, tested in test_opd_job.py and
test_training.py)."""

import json
import pathlib
import runpy
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = runpy.run_path(str(ROOT / "benchmarks" / "paper_results.py"))


def run_script(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=120)


def test_runner_lists_every_run_from_the_right_drafter_and_refuses_a_missing_start(tmp_path):
  listed = run_script("benchmarks/paper_experiment.py", "--root", str(tmp_path), "--list")
  assert listed.returncode == 0, listed.stderr
  lines = listed.stdout.splitlines()
  assert len(lines) == 1 + 3 * 2 + 5 + 1 + 2 * 2
  assert all(line.startswith("to run") for line in lines)
  opd_s1 = next(line for line in lines if f"--workdir={tmp_path}/opd_s1 " in line)
  assert ("--config=configs/opd.py:branch " in opd_s1 and "--config.train.seed=1" in opd_s1
          and f"--config.init_from={tmp_path}/plateau/drafter" in opd_s1)
  pool = next(line for line in lines if "opd_pool_s0" in line)
  assert f"--config.drafter.init_from={tmp_path}/plateau/drafter" in pool
  ablation = next(line for line in lines if "ablation_no_decay" in line)
  assert "--config=configs/opd.py:branch,no_decay " in ablation
  refused = run_script("benchmarks/paper_experiment.py", "--root", str(tmp_path), "--runs",
                       "eagle3_opd_s0")
  assert refused.returncode != 0
  assert "starts from the drafter of eagle3_sft: run --runs eagle3_sft first" in refused.stderr


def evals(*points):
  """metrics.jsonl records: a training step, then held-out evaluations at (TFLOP, tau)."""
  records = [{"step": 1, "loss": 1.0, "seconds_per_step": 2.0, "train_flops": 1e12}]
  for tflops, tau in points:
    records.append({"step": 0, "train_flops": tflops * 1e12, "heldout_tau": tau,
                    **{f"heldout_tau/{s}": tau + d for s, d in zip(RESULTS["SETS"],
                                                                  (-0.01, 0.0, 0.01))}})
  return records


def test_results_tables_average_seeds_and_read_ablations_at_their_budget(tmp_path):
  root = tmp_path / "runs"
  runs = {"plateau": evals((0, 1.0), (900, 1.2)),
          "continue_s0": evals((0, 1.20), (60, 1.20), (150, 1.21)),
          "continue_s1": evals((0, 1.20), (60, 1.19), (150, 1.23)),
          "opd_s0": evals((0, 1.20), (31, 1.25), (61, 1.30), (152, 1.40)),
          "ablation_naive": evals((0, 1.20), (62, 1.22)),
          "eagle3_sft": evals((0, 1.0), (170, 1.10)),
          "eagle3_opd_s0": evals((0, 1.10), (30, 1.12), (60, 1.15)),
          "eagle3_opd_s1": evals((0, 1.10), (30, 1.14), (60, 1.17)),
          "eagle3_continue_s0": evals((0, 1.10), (30, 1.11)),  # one evaluation short
          "opd_pool_s0": evals((0, 1.20), (60, 1.18))}  # unfinished: no drafter saved
  for name, records in runs.items():
    (root / name).mkdir(parents=True)
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if name != "opd_pool_s0":
      (root / name / "drafter").mkdir()
      (root / name / "drafter" / "drafter.json").write_text("{}")
  out = tmp_path / "results"
  result = run_script("benchmarks/paper_results.py", "--root", str(root), "--out", str(out))
  assert result.returncode == 0, result.stderr
  summary = json.loads((out / "summary.json").read_text())
  assert [e["mean"] for e in summary["branches"]["continue"]] == [1.21, 1.23]
  assert "opd_pool" not in summary["branches"]  # not finished
  assert summary["ablations"]["Draft-OPD (full)"]["mean"] == 1.30  # first evaluation >= 60
  assert summary["ablations"]["naive"]["mean"] == 1.22
  tables = (out / "tables.md").read_text()
  assert "| continue SFT (same data) | 1.210 (1.200-1.220, n=2) | 1.220 (1.210-1.230, n=2) |" \
      in tables
  assert "| opd_pool_s0 | no | 1 | 60 |" in tables
  assert "| EAGLE-3 SFT (branch start) | 1.100 | - | - |" in tables
  assert ("| EAGLE-3 Draft-OPD | 1.100 (1.100-1.100, n=2) | 1.130 (1.120-1.140, n=2) | "
          "1.160 (1.150-1.170, n=2) |") in tables
  assert "| EAGLE-3 continue SFT | 1.100 | 1.110 | - |" in tables
  assert (out / "tau_vs_flops.png").stat().st_size > 10_000
  assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
      [f"{n}.jsonl" for n in runs] + ["finished.json"])
  # Rebuilt from the committed copies alone (no ROOT), the tables are the same.
  (out / "tables.md").unlink()
  rebuilt = run_script("benchmarks/paper_results.py", "--root", str(tmp_path / "none"), "--out",
                       str(out))
  assert rebuilt.returncode == 0 and (out / "tables.md").read_text() == tables


def test_gpu_launcher_commands_and_its_refusal_without_an_accelerator(tmp_path):
  dry = subprocess.run(["bash", "launch/paper_gpu.sh", "--dry-run", "--install", "--root",
                        "/scratch/paper", "--out", str(tmp_path), "opd_s0"], cwd=ROOT,
                       capture_output=True, text=True)
  assert dry.returncode == 0, dry.stderr
  assert dry.stdout.splitlines()[-2:] == [
      "python benchmarks/paper_experiment.py --root /scratch/paper --runs opd_s0",
      f"python benchmarks/paper_results.py --root /scratch/paper --out {tmp_path}"]
  assert "jax[cuda12]" in dry.stdout.splitlines()[0]
  import jax

  if jax.default_backend() != "cpu":
    pytest.skip("an accelerator is present")
  refused = subprocess.run(["bash", "launch/paper_gpu.sh", "--root", str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
  assert refused.returncode != 0 and "no GPU or TPU visible to JAX" in refused.stderr
  assert not any(tmp_path.iterdir())
