"""Plots held-out tau against training FLOPs (and loss against steps) from metrics.jsonl files,
and prints each held-out evaluation with the mean training loss since the one before.

  python benchmarks/plot_training.py WORKDIR/metrics.jsonl [MORE.jsonl ...] --out docs/sft_tau.png
Each file is one run, labelled by its parent folder's name.
"""

import argparse
import pathlib

import numpy as np

from draftopd_jax.training import plots


def evaluations_with_loss(records: list[dict]) -> list[tuple[int, float, float]]:
  """(step, held-out tau, mean training loss of the logged steps since the previous evaluation)."""
  rows, losses = [], []
  for r in sorted(records, key=lambda r: r["step"]):
    if "loss" in r:
      losses.append(r["loss"])
    if "heldout_tau" in r:
      rows.append((r["step"], r["heldout_tau"], float(np.mean(losses)) if losses else np.nan))
      losses = []
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("metrics", nargs="+", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  runs = {p.parent.name: plots.read_metrics(p) for p in args.metrics}
  plots.training_curves(runs, args.out)
  print(f"{'run':<24} {'step':>6} {'held-out tau':>12} {'mean loss':>10}")
  for name, records in runs.items():
    for step, tau, loss in evaluations_with_loss(records):
      print(f"{name:<24} {step:>6} {tau:>12.3f} {loss:>10.3f}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
