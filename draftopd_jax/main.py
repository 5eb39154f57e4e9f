"""Command-line entry point: `python -m draftopd_jax.main --config=configs/<job>.py`.

The config file's `mode` picks the job. Any `--config.key=value` overrides a field; a config
file may take a variant as `--config=configs/job.py:variant`.
"""

import importlib
import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from draftopd_jax.errors import UserError
from draftopd_jax.training import preemption

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs (optional for generate).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 in a multi-process run (launch/*.sh set "
    "it; SLURM and TPU pods are detected without it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in the run.")
flags.mark_flag_as_required("config")


# mode -> (module, function): imported only when run, so `--help` and config errors stay fast.
MODES = {
    "generate": ("draftopd_jax.jobs.generate", "run_generate"),
    "corpus": ("draftopd_jax.jobs.corpus", "run_corpus"),
    "eval": ("draftopd_jax.jobs.eval", "run_eval"),
    "sft": ("draftopd_jax.jobs.sft", "run_sft"),
    "opd": ("draftopd_jax.jobs.opd", "run_opd"),
    "export": ("draftopd_jax.jobs.export", "run_export"),
}


def run_job(config, workdir: str | None):
  module, function = MODES[config.mode]
  return getattr(importlib.import_module(module), function)(config, workdir)


def sft_warmup(config, workdir: str | None) -> str:
  """Draft-OPD without an SFT drafter first runs (or resumes, or reuses) the SFT job of
  `config.warmup` in WORKDIR/sft_warmup, and starts from its drafter."""
  out = pathlib.Path(workdir or config.workdir) / "sft_warmup"
  if not (out / "drafter" / "drafter.json").is_file():
    from draftopd_jax.jobs import opd

    opd.preflight(config, config.warmup.drafter.block_size)
    print(f"no SFT drafter given (init_from): SFT warm-up in {out}")
    run_job(config.warmup, str(out))
  return str(out / "drafter")


def run_config(config, workdir: str | None):
  """Checks `config` and runs its job (after the SFT warm-up, for Draft-OPD without a drafter);
  returns what the job returns."""
  if config.get("mode") not in MODES:
    raise UserError(f"config.mode={config.get('mode')!r} is not a mode; choose one of "
                    f"{', '.join(MODES)}")
  from draftopd_jax.jobs import config_check  # here, as every job: `--help` need not load JAX

  config_check.check(config)
  if config.mode == "opd" and not config.init_from:
    config.init_from = sft_warmup(config, workdir)
  return run_job(config, workdir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # keep library INFO chatter off stderr
  config = _CONFIG.value
  try:
    from draftopd_jax.parallel import distributed

    try:
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
      raise UserError(str(e)) from None
    run_config(config, _WORKDIR.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except preemption.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag, config file or override is one line and exit 2."""
  try:
    remaining = flags.FLAGS(argv)
    _CONFIG.value.get("mode")  # a config file that failed to load raises here
    return remaining
  except (KeyError, AttributeError) as e:  # ml_collections: a key the locked config lacks
    text = str(e.args[0] if e.args else "").replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip(" '\"") for line in text.splitlines() if line.strip(" '\"")]
    hint = f" ({lines[1]})" if len(lines) > 1 else ""
    locked = re.match(r'Key "(\w+)" does not exist and cannot be added', lines[0] if lines else "")
    message = (f"unknown config key {locked[1]} set in the config file{hint}" if locked else
               f"unknown config key {lines[0] if lines else text} in a --config.<key> override{hint}")
  except (flags.Error, ValueError, TypeError, OSError, SyntaxError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = lines[-1] if lines else type(e).__name__
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
