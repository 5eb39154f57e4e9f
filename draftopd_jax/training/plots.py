"""Training plots from metrics.jsonl files: held-out tau against training FLOPs, losses, and the
Draft-OPD diagnostics (stream losses, replay make-up, where the first rejection falls)."""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def _tau_series(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
  """Held-out tau per dataset (and their mean) against cumulative training FLOPs."""
  series: dict[str, list[tuple[float, float]]] = {}
  for r in records:
    for key, value in r.items():
      if key.startswith("heldout_tau"):
        series.setdefault(key.split("/")[-1] if "/" in key else "mean", []).append(
            (r["train_flops"], value))
  return {name: sorted(points) for name, points in series.items()}


def tau_vs_flops(runs: dict[str, list[dict]], ax) -> None:
  for label, records in runs.items():
    for name, points in _tau_series(records).items():
      ax.plot([f / 1e12 for f, _ in points], [t for _, t in points], marker="o", markersize=3,
              label=f"{label}: {name}", linestyle="-" if name == "mean" else "--")
  ax.set(xlabel="training FLOPs (TFLOP)", ylabel="held-out tau", title="Acceptance length")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def training_curves(runs: dict[str, list[dict]], out: pathlib.Path) -> None:
  """tau vs FLOPs and loss vs step for each run (with its validation loss, dashed, if logged)."""
  fig, (tau_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  tau_vs_flops(runs, tau_ax)
  for label, records in runs.items():
    losses = sorted((r["step"], r["loss"]) for r in records if "loss" in r)
    line, = loss_ax.plot([s for s, _ in losses], [v for _, v in losses], label=label)
    held_out = sorted((r["step"], r["validation_loss"]) for r in records
                      if "validation_loss" in r)
    if held_out:
      loss_ax.plot([s for s, _ in held_out], [v for _, v in held_out], ls="--", marker="o",
                   color=line.get_color(), label=f"{label} (validation)")
  loss_ax.set(xlabel="step", ylabel="loss", title="Loss", yscale="log")
  loss_ax.grid(alpha=0.3)
  loss_ax.legend(fontsize=8)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)


def opd_curves(metrics_path: pathlib.Path, out_dir: pathlib.Path) -> list[pathlib.Path]:
  """opd_tau.png (held-out tau vs FLOPs) and opd_diagnostics.png; returns the paths."""
  records = read_metrics(metrics_path)
  steps = [r for r in records if "loss" in r]
  tau_png, diag_png = out_dir / "opd_tau.png", out_dir / "opd_diagnostics.png"
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  tau_vs_flops({"Draft-OPD": records}, ax)
  fig.tight_layout()
  fig.savefig(tau_png, dpi=120)
  plt.close(fig)
  if not steps:
    return [tau_png]
  x = [r["step"] for r in steps]
  fig, axes = plt.subplots(1, 4, figsize=(19, 4))
  for key in ("loss", "response_loss", "rejected_loss"):
    axes[0].plot(x, [r[key] for r in steps], label=key)
  axes[0].set(title="losses", xlabel="step")
  axes[1].plot(x, [r["rollout_tau"] for r in steps], label="rollout tau (training prompts)")
  axes[1].set(title="acceptance length in the rollouts", xlabel="step")
  for key in ("share_accepted", "share_first_rejected", "share_rejected_suffix"):
    axes[2].plot(x, [r[key] for r in steps], label=key.removeprefix("share_"))
  if "suffix_proposal_committed" in steps[0]:
    axes[2].plot(x, [r["suffix_proposal_committed"] for r in steps], ls="--",
                 label="suffix proposals committed anyway (of the suffix)")
  axes[2].set(title="make-up of the replayed tokens", xlabel="step")
  half = len(steps) // 2
  for label, part in (("first half", steps[:max(half, 1)]), ("second half", steps[half:])):
    counts = np.sum([r["first_rejection_histogram"] for r in part], axis=0)
    axes[3].plot(np.arange(len(counts)), counts / max(counts.sum(), 1), marker="o", label=label)
  axes[3].set(title="offset of the first rejection (0 = all accepted)", xlabel="offset",
              ylabel="share of verify steps")
  for a in axes:
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(diag_png, dpi=120)
  plt.close(fig)
  return [tau_png, diag_png]


def tau_projection(runs: dict[str, list[dict]], projections: dict[str, dict],
                   out: pathlib.Path) -> None:
  """Mean held-out tau against FLOPs (log axis) with each run's fitted line out to the end of its
  schedule and the goal as a horizontal line (benchmarks/project_tau.py)."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, records in runs.items():
    points = [(r["train_flops"], r["heldout_tau"]) for r in records
              if "heldout_tau" in r and r["train_flops"] > 0]
    p = projections[label]
    line = ax.plot([f for f, _ in points], [t for _, t in points], marker="o", markersize=3,
                   linestyle="", label=f"{label}")[0]
    ends = np.array([p["fit_from_flops"], p["end_flops"]])
    ax.plot(ends, p["slope_per_decade"] * np.log10(ends) + p["intercept"], linestyle="--",
            color=line.get_color(),
            label=f"{label}: fit, {p['projected_tau_at_end']:.2f} at step {p['end_step']}")
  goal = next(iter(projections.values()))["goal"]
  ax.axhline(goal, color="gray", linewidth=1, label=f"goal {goal}")
  ax.set(xscale="log", xlabel="training FLOPs", ylabel="held-out tau (mean of sets)",
         title="Stop rule: held-out tau projected in log FLOPs")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
