"""PNG plots of evaluation results: per-position acceptance and acceptance-length histograms."""

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_acceptance(results: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Writes acceptance_by_position.png and acceptance_length_hist.png; returns their paths."""
  datasets = results["datasets"]
  k = results["block_size"]
  width = 0.8 / max(len(datasets), 1)

  fig, ax = plt.subplots(figsize=(7, 4))
  for i, (name, r) in enumerate(datasets.items()):
    positions = np.arange(1, k) + (i - (len(datasets) - 1) / 2) * width
    ax.bar(positions, r["reach_rate"], width, label=f"{name} (tau {r['tau']:.2f})")
  ax.set(xlabel="proposal position in the block", ylabel="share of verify steps accepted",
         title=f"Acceptance by position ({results['drafter']}, K={k})", ylim=(0, 1))
  ax.set_xticks(np.arange(1, k))
  ax.legend()
  by_position = out_dir / "acceptance_by_position.png"
  fig.tight_layout()
  fig.savefig(by_position, dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(7, 4))
  for i, (name, r) in enumerate(datasets.items()):
    hist = np.asarray(r["length_histogram"], float)
    positions = np.arange(1, k + 1) + (i - (len(datasets) - 1) / 2) * width
    ax.bar(positions, hist / max(hist.sum(), 1), width, label=name)
  ax.set(xlabel="acceptance length (accepted + 1)", ylabel="share of verify steps",
         title="Acceptance-length histogram")
  ax.set_xticks(np.arange(1, k + 1))
  ax.legend()
  histogram = out_dir / "acceptance_length_hist.png"
  fig.tight_layout()
  fig.savefig(histogram, dpi=120)
  plt.close(fig)
  return [by_position, histogram]
