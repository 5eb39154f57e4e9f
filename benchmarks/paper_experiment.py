"""The paper-reproduction experiment (docs/results.md): every run, in order, resumable.

Each run is one `python -m draftopd_jax.main` job in ROOT/NAME with the config named below; a run
whose drafter is saved is done, a stopped one resumes from its checkpoints when this script (or
its printed command) runs again. Regenerated responses are shared between runs through their
content-addressed cache files (ROOT/*/data/responses-*.jsonl).

  python benchmarks/paper_experiment.py --list                     # the runs and their commands
  python benchmarks/paper_experiment.py --runs plateau             # SFT to the plateau (1.5 h)
  python benchmarks/paper_experiment.py --runs continue_s0 opd_pool_s0 opd_s0
  python benchmarks/paper_experiment.py                            # everything not yet done
  python benchmarks/paper_results.py                               # tables and plots from ROOT

Runs (configs/sft.py and configs/opd.py hold every setting):
  plateau            configs/sft.py:plateau, 2,000 SFT steps
  continue_sS        configs/sft.py:continue, branch 1 (seed S)
  opd_pool_sS        configs/sft.py:opd_pool, branch 2 (seed S)
  opd_sS             configs/opd.py:branch, branch 3 (seed S)
  ablation_A         configs/opd.py:branch,A for each ablation A (seed 0)
  eagle3_sft         configs/sft.py:eagle3_sft, 200 EAGLE-3 SFT steps (the smaller budget)
  eagle3_continue_sS configs/sft.py:eagle3_continue, from eagle3_sft (seed S)
  eagle3_opd_sS      configs/opd.py:eagle3_branch, from eagle3_sft (seed S)
"""

import argparse
import pathlib
import shutil
import subprocess
import sys
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[1]
ABLATIONS = ("all_forward", "all_reverse", "no_decay", "random_anchors", "naive")
SEEDS = (0, 1)


class Run(NamedTuple):
  name: str
  config: str
  start: str = ""  # the run whose final drafter this one starts from
  seed: int = 0

  def command(self, root: pathlib.Path) -> list[str]:
    flags = [f"--config={self.config}", f"--workdir={root / self.name}"]
    if self.start:
      key = "drafter.init_from" if self.config.startswith("configs/sft.py") else "init_from"
      flags += [f"--config.{key}={root / self.start / 'drafter'}",
                f"--config.train.seed={self.seed}"]
    return ["python", "-m", "draftopd_jax.main", *flags]


def experiment_runs() -> list[Run]:
  runs = [Run("plateau", "configs/sft.py:plateau")]
  for seed in SEEDS:
    runs += [Run(f"continue_s{seed}", "configs/sft.py:continue", "plateau", seed),
             Run(f"opd_pool_s{seed}", "configs/sft.py:opd_pool", "plateau", seed),
             Run(f"opd_s{seed}", "configs/opd.py:branch", "plateau", seed)]
  runs += [Run(f"ablation_{a}", f"configs/opd.py:branch,{a}", "plateau") for a in ABLATIONS]
  runs.append(Run("eagle3_sft", "configs/sft.py:eagle3_sft"))
  for seed in SEEDS:
    runs += [Run(f"eagle3_continue_s{seed}", "configs/sft.py:eagle3_continue", "eagle3_sft", seed),
             Run(f"eagle3_opd_s{seed}", "configs/opd.py:eagle3_branch", "eagle3_sft", seed)]
  return runs


def share_cached_responses(root: pathlib.Path, workdir: pathlib.Path) -> None:
  """Copies the other runs' regenerated-response caches into `workdir`; a run reads the one whose
  content key (prompts, length, temperature, dtype) matches its own data and ignores the rest."""
  (workdir / "data").mkdir(parents=True, exist_ok=True)
  for cache in root.glob("*/data/responses-*.jsonl"):
    if not (workdir / "data" / cache.name).exists():
      shutil.copyfile(cache, workdir / "data" / cache.name)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", type=pathlib.Path, default=REPO / "runs" / "paper",
                      help="where the runs' workdirs go (outside git; default runs/paper)")
  parser.add_argument("--runs", nargs="+", help="run only these (default: all, in order)")
  parser.add_argument("--list", action="store_true", help="print the runs' commands and state")
  args = parser.parse_args()
  root = args.root.resolve()
  runs = experiment_runs()
  unknown = set(args.runs or ()) - {r.name for r in runs}
  if unknown:
    parser.error(f"unknown runs {sorted(unknown)}; --list shows them")
  for run in runs:
    if args.runs and run.name not in args.runs:
      continue
    done = (root / run.name / "drafter" / "drafter.json").is_file()
    if args.list:
      print(f"{'done  ' if done else 'to run'} {' '.join(run.command(root))}")
      continue
    if done:
      print(f"{run.name}: done")
      continue
    if run.start and not (root / run.start / "drafter" / "drafter.json").is_file():
      sys.exit(f"{run.name} starts from the drafter of {run.start}: run --runs {run.start} first")
    if run.config.startswith("configs/sft.py"):
      share_cached_responses(root, root / run.name)
    print(f"{run.name}: {' '.join(run.command(root))}", flush=True)
    result = subprocess.run([sys.executable, *run.command(root)[1:]], cwd=REPO)
    if result.returncode != 0:
      sys.exit(f"{run.name} stopped with exit code {result.returncode}; run the same command "
               "again to resume it")


if __name__ == "__main__":
  main()
