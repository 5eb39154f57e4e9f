"""benchmarks/opd_sweep.py on the committed sweep from the shipped drafter (docs/opd.md's table)."""

import json
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEP = ROOT / "docs" / "runs" / "opd_sweep_shipped"


def sweep(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "benchmarks/opd_sweep.py", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=120)


def test_the_table_ranks_runs_by_their_change_in_tau(tmp_path):
  out = tmp_path / "sweep.png"
  result = sweep(*map(str, sorted(SWEEP.iterdir())), "--out", str(out))
  assert result.returncode == 0, result.stderr
  rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
  assert rows[0] == "| run | step | humaneval | mtbench | sharegpt | mean | change |"
  assert rows[1] == "| naive_3e-5 | 60 | 1.381 | 1.372 | 1.528 | 1.427 | +0.008 |"
  changes = [float(row.split("|")[-2]) for row in rows[1:]]
  assert len(changes) == 10 and changes == sorted(changes, reverse=True)
  assert out.stat().st_size > 0


def test_a_run_without_an_evaluation_after_training_is_refused(tmp_path):
  run = tmp_path / "unfinished"
  shutil.copytree(SWEEP / "naive_3e-5", run)
  first = (run / "metrics.jsonl").read_text().splitlines()[0]
  assert json.loads(first)["step"] == 0
  (run / "metrics.jsonl").write_text(first + "\n")
  result = sweep(str(run), "--out", str(tmp_path / "x.png"))
  assert result.returncode != 0
  assert "has no held-out tau after an update" in result.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "x.png").exists()
