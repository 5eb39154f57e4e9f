"""Tables and plots of the paper-reproduction experiment from its runs' metrics.jsonl files.

  python benchmarks/paper_results.py [--root runs/paper] [--out docs/results]

Copies each run's metrics.jsonl to OUT/runs/NAME.jsonl (the committed raw metrics; with no ROOT,
it rebuilds everything from those copies), then writes
  OUT/tau_vs_flops.png   held-out tau against total training FLOPs: the SFT plateau run, then the
                         three branches from its final drafter (mean over seeds, min-max band)
  OUT/tables.md          final tau per branch and held-out set (mean, min-max over seeds); the
                         ablations at their budget; EAGLE-3 SFT vs Draft-OPD; steps, FLOPs and
                         hours per run
  OUT/summary.json       the same numbers
Runs that have not started are left out; unfinished ones are marked.
"""

import argparse
import json
import pathlib
import runpy
import shutil
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SETS = ("humaneval", "mtbench", "sharegpt")
BRANCHES = {"continue": "continue SFT (same data)", "opd_pool": "SFT on the OPD prompt pool",
            "opd": "Draft-OPD"}
EAGLE3_BRANCHES = {"eagle3_continue": "EAGLE-3 continue SFT", "eagle3_opd": "EAGLE-3 Draft-OPD"}
SFT_CONFIGS = runpy.run_path(str(REPO / "configs" / "sft.py"))


def read(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluations(records: list[dict]) -> list[dict]:
  """Held-out evaluations in FLOPs order: {"flops", "mean", SET: tau...}."""
  evals = [{"flops": r["train_flops"], "mean": r["heldout_tau"],
            **{s: r[f"heldout_tau/{s}"] for s in SETS if f"heldout_tau/{s}" in r}}
           for r in records if "heldout_tau" in r]
  return sorted(evals, key=lambda e: e["flops"])


def at_flops(evals: list[dict], flops: float) -> dict | None:
  """The evaluation at `flops`: FLOPs-spaced evaluations land just past each multiple of the
  spacing, so the first one in [flops, flops + spacing)."""
  return next((e for e in evals if flops <= e["flops"] < flops + SFT_CONFIGS["EVAL_FLOPS"]),
              None)


def seed_runs(runs: dict[str, list[dict]], branch: str) -> dict[str, list[dict]]:
  """The runs of `branch`, one per seed (named BRANCH_sSEED)."""
  return {name: records for name, records in runs.items()
          if name.rsplit("_s", 1)[0] == branch and name.rsplit("_s", 1)[-1].isdigit()}


def spread(values: list[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f}, n={len(values)})"


def collect(root: pathlib.Path | None, out: pathlib.Path) -> dict[str, list[dict]]:
  """{run name: metrics records}; OUT/runs/finished.json says which runs saved their drafter."""
  raw = out / "runs"
  raw.mkdir(parents=True, exist_ok=True)
  if root is not None:
    finished = {}
    for metrics in sorted(root.glob("*/metrics.jsonl")):
      shutil.copyfile(metrics, raw / f"{metrics.parent.name}.jsonl")
      finished[metrics.parent.name] = (metrics.parent / "drafter" / "drafter.json").is_file()
    (raw / "finished.json").write_text(json.dumps(finished, indent=1) + "\n")
  return {p.stem: read(p) for p in sorted(raw.glob("*.jsonl"))}


def finished(out: pathlib.Path, name: str) -> bool:
  marker = out / "runs" / "finished.json"
  return marker.is_file() and json.loads(marker.read_text()).get(name, False)


def branch_curves(runs: dict[str, list[dict]], branch: str, key: str) -> tuple[list, ...]:
  """(extra TFLOP, mean, min, max) over the seeds of `branch`: evaluations are FLOPs-spaced, so
  the i-th evaluation of every seed is at about the same FLOPs; each point averages the seeds that
  got that far."""
  seeds = [evaluations(r) for r in seed_runs(runs, branch).values()]
  curves: tuple[list, ...] = ([], [], [], [])
  for i in range(max((len(s) for s in seeds), default=0)):
    points = [s[i] for s in seeds if i < len(s)]
    values = [p[key] for p in points]
    for curve, value in zip(curves, (statistics.mean(p["flops"] for p in points) / 1e12,
                                     statistics.mean(values), min(values), max(values))):
      curve.append(value)
  return curves


def plot(runs: dict[str, list[dict]], out: pathlib.Path) -> None:
  """Top row: the plateau run, then the branches; bottom row: the branches alone, zoomed."""
  plateau = evaluations(runs["plateau"])
  start = plateau[-1]["flops"] / 1e12
  fig, axes = plt.subplots(2, 4, figsize=(18, 8))
  for column, key in enumerate(("mean", *SETS)):
    top, zoom = axes[0, column], axes[1, column]
    top.plot([e["flops"] / 1e12 for e in plateau], [e.get(key) for e in plateau], "k-o",
             markersize=3, label="SFT to the plateau")
    for branch, label in BRANCHES.items():
      # Seeds counted once they are past their first evaluation (the shared starting point).
      seeds = sum(len(evaluations(r)) > 1 for r in seed_runs(runs, branch).values())
      if not seeds:
        continue
      xs, mean, low, high = branch_curves(runs, branch, key)
      label = f"{label} ({seeds} seed{'s' * (seeds > 1)})"
      line, = top.plot([start + x for x in xs], mean, "-o", markersize=3, label=label)
      zoom.plot(xs, mean, "-o", markersize=4, color=line.get_color(), label=label)
      zoom.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    top.axvline(start, color="gray", linestyle=":", linewidth=1)
    top.set(title=f"held-out tau: {key}", xlabel="total training FLOPs (TFLOP)")
    zoom.set(title=f"branches only: {key}", xlabel="extra training FLOPs after the plateau (TFLOP)")
    for ax in (top, zoom):
      ax.grid(alpha=0.3)
  for ax in axes[:, 0]:
    ax.set_ylabel("acceptance length tau")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle("SmolLM2-135M-Instruct target, 2-layer DFlash drafter (K=8): SFT plateau, then "
               "three branches at matched extra FLOPs (dotted line: branch point; band: min-max "
               "over seeds)")
  fig.tight_layout()
  fig.savefig(out / "tau_vs_flops.png", dpi=100)
  plt.close(fig)


def flops_marks(budget: float) -> list[float]:
  """The FLOPs at which runs of this budget are evaluated: 0 and every EVAL_FLOPS up to it."""
  every = SFT_CONFIGS["EVAL_FLOPS"]
  return [i * every for i in range(int(budget // every) + 1)]


def row(label: str, cells) -> str:
  return f"| {label} | " + " | ".join(cells) + " |"


def table_head(title: str, first_column: str, columns) -> list[str]:
  return ["", f"## {title}", "", row(first_column, columns), "|---" * (len(columns) + 1) + "|"]


def by_flops_head(title: str, first_column: str, marks: list[float]) -> list[str]:
  return table_head(title, first_column, [f"{m / 1e12:.0f} TFLOP" for m in marks])


def per_set(evals: list[dict]) -> list[str]:
  """Cells per held-out set and their mean, over `evals` (one per seed)."""
  return [spread([e[k] for e in evals]) for k in (*SETS, "mean")]


def final_evaluations(runs: dict[str, list[dict]], out: pathlib.Path, branch: str) -> list[dict]:
  """The last held-out evaluation of each finished seed of `branch`."""
  return [evaluations(r)[-1] for name, r in seed_runs(runs, branch).items()
          if finished(out, name)]


def by_flops_rows(runs: dict[str, list[dict]], branches: dict[str, str],
                  marks: list[float]) -> list[str]:
  """A row per branch: mean held-out tau at each of `marks` over the seeds that got there."""
  lines = []
  for branch, label in branches.items():
    seeds = [evaluations(r) for r in seed_runs(runs, branch).values()]
    if seeds:
      cells = []
      for m in marks:
        reached = [e["mean"] for e in (at_flops(s, m) for s in seeds) if e]
        cells.append(spread(reached) if reached else "-")
      lines.append(row(label, cells))
  return lines


def tables(runs: dict[str, list[dict]], out: pathlib.Path) -> dict:
  summary: dict = {"branch_flops": SFT_CONFIGS["BRANCH_FLOPS"],
                   "ablation_flops": SFT_CONFIGS["ABLATION_FLOPS"], "branches": {},
                   "ablations": {}, "runs": {}}
  lines = table_head(f"Branches at {SFT_CONFIGS['BRANCH_FLOPS'] / 1e12:.0f} TFLOP of extra "
                     "training", "branch", (*SETS, "mean"))[1:]  # no blank line atop the file
  start = next((evaluations(r)[0] for n, r in runs.items() if n.startswith("opd_s")), None)
  if start:
    summary["branch_start"] = start
    lines.append(row("plateau drafter (branch start)", per_set([start])))
  for branch, label in BRANCHES.items():
    if finals := final_evaluations(runs, out, branch):
      summary["branches"][branch] = finals
      lines.append(row(label, per_set(finals)))
  marks = flops_marks(SFT_CONFIGS["BRANCH_FLOPS"])
  lines += by_flops_head("Mean held-out tau by extra training FLOPs (all seeds that got there)",
                         "branch", marks)
  lines += by_flops_rows(runs, BRANCHES, marks)
  ablation_rows = [("Draft-OPD (full)", at_flops(evaluations(runs["opd_s0"]),
                                                 SFT_CONFIGS["ABLATION_FLOPS"]) if "opd_s0" in runs
                    else None)]
  ablation_rows += [(name.removeprefix("ablation_"), evaluations(r)[-1])
                    for name, r in runs.items() if name.startswith("ablation_")
                    and finished(out, name)]
  lines += table_head(f"Ablations at {SFT_CONFIGS['ABLATION_FLOPS'] / 1e12:.0f} TFLOP (seed 0)",
                      "variant", (*SETS, "mean"))
  for label, e in ablation_rows:
    if e:
      summary["ablations"][label] = e
      lines.append(row(label, per_set([e])))
  summary["eagle3"] = {name: evaluations(r) for name, r in runs.items()
                       if name.startswith("eagle3")}
  if "eagle3_sft" in runs:
    budget = SFT_CONFIGS["EAGLE3_BRANCH_FLOPS"]
    marks = flops_marks(budget)
    lines += by_flops_head("EAGLE-3: mean held-out tau by extra training FLOPs (all seeds that "
                           "got there)", "run", marks)
    # The SFT run has its own FLOPs axis: the branch start is its last evaluation.
    sft_end = summary["eagle3"]["eagle3_sft"][-1]
    lines.append(row("EAGLE-3 SFT (branch start)",
                     [f"{sft_end['mean']:.3f}", *["-"] * (len(marks) - 1)]))
    lines += by_flops_rows(runs, EAGLE3_BRANCHES, marks)
    lines += table_head(f"EAGLE-3 branches at {budget / 1e12:.0f} TFLOP of extra training",
                        "run", (*SETS, "mean"))
    lines.append(row("EAGLE-3 SFT (branch start)", per_set([sft_end])))
    for branch, label in EAGLE3_BRANCHES.items():
      if finals := final_evaluations(runs, out, branch):
        lines.append(row(label, per_set(finals)))
  lines += table_head("Runs", "run", ("finished", "steps", "training TFLOP",
                                      "hours of training steps"))
  for name, records in runs.items():
    # SFT logs every 10th step: the logged steps sample the step time, and the final evaluation's
    # record carries the last step. Held-out evaluations are not counted in the hours.
    steps = [r for r in records if "loss" in r]
    last = max((r["step"] for r in records), default=0)
    hours = statistics.mean(r["seconds_per_step"] for r in steps) * last / 3600 if steps else 0.0
    info = {"finished": finished(out, name), "steps": last,
            "tflops": max((r.get("train_flops", 0.0) for r in records), default=0.0) / 1e12,
            "hours": hours}
    summary["runs"][name] = info
    lines.append(row(name, ("yes" if info["finished"] else "no", str(info["steps"]),
                            f"{info['tflops']:.0f}", f"{info['hours']:.2f}")))
  (out / "tables.md").write_text("\n".join(lines) + "\n")
  (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", type=pathlib.Path, default=REPO / "runs" / "paper")
  parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "results")
  args = parser.parse_args()
  runs = collect(args.root if args.root.is_dir() else None, args.out)
  if "plateau" not in runs:
    raise SystemExit(f"no plateau run in {args.root} or {args.out / 'runs'}: run "
                     "benchmarks/paper_experiment.py first")
  plot(runs, args.out)
  tables(runs, args.out)
  print((args.out / "tables.md").read_text())


if __name__ == "__main__":
  main()
