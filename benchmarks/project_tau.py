"""The stop rule: project each run's held-out tau to the end of its schedule.

  python benchmarks/project_tau.py docs/runs/sft_corpus_l5/metrics.jsonl \
      docs/runs/sft_corpus_v16k/metrics.jsonl --end-step 4000 --out docs/sft_projection.png

Fits mean held-out tau against log10(training FLOPs) on each run's evaluations from
--fit-from-step on (the first steps only learn the unigram distribution), reads the line at the
FLOPs of --end-step, and says how many FLOPs and steps the line needs to reach --goal. Each file
is one run, labelled by its parent folder's name. The last line is JSON.
"""

import argparse
import json
import pathlib

from draftopd_jax.evaluation import scaling
from draftopd_jax.training import plots


def project(records: list[dict], fit_from_step: int, end_step: int, goal: float) -> dict:
  evals = sorted((r["step"], r["train_flops"], r["heldout_tau"]) for r in records
                 if "heldout_tau" in r)
  last_step, last_flops, last_tau = evals[-1]
  flops_per_step = last_flops / last_step
  fitted = [(f, t) for s, f, t in evals if s >= fit_from_step]
  fit = scaling.fit_log_flops(fitted)
  goal_flops = fit.flops_for(goal)
  return {"fit_points": fit.num_points, "fit_from_flops": fitted[0][0],
          "slope_per_decade": fit.slope,
          "intercept": fit.intercept, "last_step": last_step, "last_tau": last_tau,
          "end_step": end_step, "end_flops": end_step * flops_per_step,
          "projected_tau_at_end": fit.tau_at(end_step * flops_per_step),
          "goal": goal, "flops_to_goal": goal_flops, "steps_to_goal": goal_flops / flops_per_step}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("metrics", nargs="+", type=pathlib.Path)
  parser.add_argument("--fit-from-step", type=int, default=200)
  parser.add_argument("--end-step", type=int, required=True, help="the step the schedule ends at")
  parser.add_argument("--goal", type=float, default=2.0)
  parser.add_argument("--out", type=pathlib.Path, help="a plot of the points and the lines")
  args = parser.parse_args()
  runs = {p.parent.name: plots.read_metrics(p) for p in args.metrics}
  results = {name: project(records, args.fit_from_step, args.end_step, args.goal)
             for name, records in runs.items()}
  print(f"{'run':<24} {'points':>6} {'tau/decade':>10} {'last tau':>14} "
        f"{'tau at end':>16} {'steps to ' + str(args.goal):>14}")
  for name, r in results.items():
    print(f"{name:<24} {r['fit_points']:>6} {r['slope_per_decade']:>10.3f} "
          f"{r['last_tau']:>6.3f} @ {r['last_step']:>5} {r['projected_tau_at_end']:>7.3f} @ "
          f"{r['end_step']:>5} {r['steps_to_goal']:>14,.0f}")
  if args.out:
    plots.tau_projection(runs, results, args.out)
    print(f"wrote {args.out}")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
