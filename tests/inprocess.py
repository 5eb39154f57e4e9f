"""Jobs in the test process: what `python -m draftopd_jax.main --config=configs/FILE[:VARIANT]
--config.KEY=VALUE ... --workdir=DIR` runs, without a process start, so tests share its imports,
traced functions and compiled programs. The CLI itself (flags, one-line errors, exit codes,
signals, several processes) is tested with real processes in test_cli.py, test_hardening.py and
test_preemption.py."""

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Overrides for a job whose held-out tau must run and be logged but whose value the test does not
# check: one prompt, 4 tokens (in a quick SFT job the evaluations took a third of its time), from
# MT-Bench, whose first prompt is the shortest of the sets' (127 tokens; HumanEval's 348).
TINY_HELDOUT = dict(heldout__datasets=("mtbench",), heldout__num_prompts=1,
                    heldout__max_new_tokens=4)


def job_config(config: str, **overrides):
  """`configs/<config>` (FILE or FILE:VARIANT) with overrides, `__` for a dot (`train__steps=3` for
  `--config.train.steps=3`), locked as the command line leaves it."""
  file, _, variant = config.partition(":")
  c = runpy.run_path(str(ROOT / "configs" / file))["get_config"](variant or None)
  for key, value in overrides.items():
    *parents, leaf = key.split("__")
    node = c
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return c


def run_job(config: str, workdir, **overrides):
  """Runs the job as `main.py` does once its flags are parsed (workdir None: no --workdir);
  returns what the job returns."""
  from draftopd_jax import main

  return main.run_config(job_config(config, **overrides),
                         None if workdir is None else str(workdir))
