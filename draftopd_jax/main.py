"""Command-line entry point: `python -m draftopd_jax.main --config=configs/<job>.py`.

The config file's `mode` picks the job. Any `--config.key=value` overrides a field; a config
file may take a variant as `--config=configs/job.py:variant`.
"""

import json
import pathlib
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


def run_generate(config, workdir: str | None) -> None:
  from draftopd_jax.data.prompts import read_prompts_file
  from draftopd_jax.decoding.completions import complete
  from draftopd_jax.decoding.sampling import SamplingConfig
  from draftopd_jax.io import load_model

  prompts = read_prompts_file(config.prompts_file) if config.prompts_file else list(config.prompts)
  sampling = SamplingConfig(**config.sampling)
  model = load_model(config.model, dtype=config.dtype)
  completions = complete(model, prompts, max_new_tokens=config.max_new_tokens, sampling=sampling,
                         batch_size=config.batch_size, chat_template=config.chat_template,
                         max_prompt_tokens=config.max_prompt_tokens or None, seed=config.seed)
  for prompt, completion in zip(prompts, completions):
    print(f"### prompt\n{prompt}\n### completion\n{completion}\n")
  if workdir:
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "completions.jsonl", "w") as f:
      for prompt, completion in zip(prompts, completions):
        f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")


def run_corpus(config, workdir: str | None) -> None:
  from draftopd_jax.data.regeneration import run_corpus as build

  build(config, workdir)


def run_eval(config, workdir: str | None) -> None:
  from draftopd_jax.evaluation.run import run_eval as evaluate

  evaluate(config, workdir)


def run_sft(config, workdir: str | None) -> None:
  from draftopd_jax.training.sft import run_sft as train

  train(config, workdir)


def run_opd(config, workdir: str | None) -> None:
  from draftopd_jax.training.opd import run_opd as train

  train(config, workdir)


def run_export(config, workdir: str | None) -> None:
  from draftopd_jax.io.export import run_export as export

  export(config, workdir)


MODES = {"generate": run_generate, "corpus": run_corpus, "eval": run_eval, "sft": run_sft, "opd": run_opd,
         "export": run_export}


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
    if config.get("mode") not in MODES:
      raise UserError(f"config.mode={config.get('mode')!r} is not a mode; choose one of "
                      f"{', '.join(MODES)}")
    from draftopd_jax import config_check

    config_check.check(config)
    MODES[config.mode](config, _WORKDIR.value)
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
  except (KeyError, AttributeError) as e:  # ml_collections: override of a key the config lacks
    text = str(e.args[0] if e.args else "").replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip(" '\"") for line in text.splitlines() if line.strip(" '\"")]
    hint = f" ({lines[1]})" if len(lines) > 1 else ""
    message = f"unknown config key {lines[0] if lines else text} in a --config.<key> override{hint}"
  except (flags.Error, ValueError, TypeError, OSError, SyntaxError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = lines[-1] if lines else type(e).__name__
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
