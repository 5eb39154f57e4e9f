"""Plots held-out tau against training FLOPs (and loss against steps) from metrics.jsonl files.

  python benchmarks/plot_training.py WORKDIR/metrics.jsonl [MORE.jsonl ...] --out docs/sft_tau.png
Each file is one run, labelled by its parent folder's name.
"""

import argparse
import pathlib

from draftopd_jax.training import plots


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("metrics", nargs="+", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  plots.training_curves({p.parent.name: plots.read_metrics(p) for p in args.metrics}, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
