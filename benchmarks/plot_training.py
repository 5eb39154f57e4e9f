"""Plots held-out tau against training FLOPs (and loss against steps) from metrics.jsonl files.

  python benchmarks/plot_training.py WORKDIR/metrics.jsonl [MORE.jsonl ...] --out docs/sft_tau.png
Each file is one run, labelled by its parent folder's name.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("metrics", nargs="+", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  fig, (tau_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for path in args.metrics:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    taus = sorted((r["train_flops"], r["heldout_tau"]) for r in records if "heldout_tau" in r)
    losses = sorted((r["step"], r["loss"]) for r in records if "loss" in r)
    label = path.parent.name
    tau_ax.plot([f / 1e12 for f, _ in taus], [t for _, t in taus], marker="o", label=label)
    loss_ax.plot([s for s, _ in losses], [l for _, l in losses], label=label)
  tau_ax.set(xlabel="training FLOPs (TFLOP: target forward + drafter forward/backward)",
             ylabel="held-out tau (HumanEval + MT-Bench)", title="Acceptance length")
  loss_ax.set(xlabel="step", ylabel="training loss", title="Loss", yscale="log")
  for ax in (tau_ax, loss_ax):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
