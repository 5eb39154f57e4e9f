"""Held-out tau before and after Draft-OPD runs that start from one drafter: a table and a plot.

  python benchmarks/opd_sweep.py docs/runs/opd_sweep_shipped/* --out docs/opd_sweep_shipped.png
Each argument is a run's workdir (or a copy of its metrics.jsonl), labelled by its folder name; the
table gives tau per held-out set after the run's last update and the change of the macro mean from
the evaluation before the first update, best first.
"""

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from draftopd_jax.training import plots  # noqa: E402


def before_after(run: pathlib.Path) -> tuple[dict, dict]:
  """The held-out evaluations at step 0 and after the last update (metrics.jsonl has both)."""
  evals = [r for r in plots.read_metrics(run / "metrics.jsonl") if "heldout_tau" in r]
  if not evals or evals[-1]["step"] == 0:
    raise SystemExit(f"{run} has no held-out tau after an update; let the run finish first")
  return evals[0], evals[-1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  results = {run.name: before_after(run) for run in args.runs}
  sets = sorted(k.removeprefix("heldout_tau/") for k in next(iter(results.values()))[0]
                if k.startswith("heldout_tau/"))
  change = {name: after["heldout_tau"] - before["heldout_tau"]
            for name, (before, after) in results.items()}
  order = sorted(results, key=change.get, reverse=True)
  print("| run | step | " + " | ".join(sets) + " | mean | change |")
  print("|---|---|" + "---|" * len(sets) + "---|---|")
  for name in order:
    before, after = results[name]
    cells = " | ".join(f"{after['heldout_tau/' + s]:.3f}" for s in sets)
    print(f"| {name} | {after['step']} | {cells} | {after['heldout_tau']:.3f} | "
          f"{change[name]:+.3f} |")
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(order) + 1.5))
  y = np.arange(len(order))
  height = 0.8 / len(sets)
  for i, s in enumerate(sets):
    ax.barh(y + i * height, [results[n][1]["heldout_tau/" + s] - results[n][0]["heldout_tau/" + s]
                             for n in order], height, label=s)
  ax.set_yticks(y + height * (len(sets) - 1) / 2, order)
  ax.invert_yaxis()
  ax.axvline(0, color="black", lw=0.8)
  ax.set(xlabel="held-out tau after minus before", title="Draft-OPD runs from one drafter")
  ax.grid(axis="x", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
