"""Config checks that run before any work: a mistake found here is one line and exit 2, before a
model loads or anything is written.

* Unknown keys are caught where they are set: the job configs come locked (`configs/*.py`), so a
  `--config.train.stpes=3` override, or a config file that builds on one and sets `train.stpes`,
  fails with ml_collections' KeyError or AttributeError, which `main.py` turns into one line.
* Values: block sizes of at least 2, positive counts, known choices.
* Memory (CPU only, once the model is known): the largest activations of a training step against
  the machine's memory, so that a setting that would swap or be killed fails at once.
"""

import os

import jax
import ml_collections

from draftopd_jax.errors import UserError

# (mode, key, test, what it must be); "a|b" tries the keys in order and checks those present.
RULES = (
    ("sft", "drafter.block_size", lambda v: v >= 2, "at least 2 (the anchor and a proposal)"),
    ("eval", "drafter.block_size", lambda v: v >= 2, "at least 2 (the anchor and a proposal)"),
    ("opd", "warmup.drafter.block_size", lambda v: v >= 2, "at least 2 (the anchor and a proposal)"),
    ("sft", "drafter.kind", lambda v: v in ("dflash", "eagle3"), "dflash or eagle3"),
    ("eval", "drafter.kind", lambda v: v in ("dflash", "eagle3", "oracle", "draft_model"),
     "dflash, eagle3, oracle or draft_model"),
    ("sft", "train.steps", lambda v: v >= 1, "at least 1"),
    ("sft", "train.batch_size", lambda v: v >= 1, "at least 1"),
    ("sft", "train.num_anchors", lambda v: v >= 1, "at least 1"),
    ("sft", "data.num_prompts", lambda v: v >= 1, "at least 1"),
    ("sft", "data.response_tokens", lambda v: v >= 1, "at least 1"),
    ("opd", "train.steps", lambda v: v >= 1, "at least 1"),
    ("opd", "rollout.batch_size", lambda v: v >= 1, "at least 1"),
    ("opd", "rollout.rollouts_per_update", lambda v: v >= 1, "at least 1"),
    ("opd", "rollout.max_new_tokens", lambda v: v >= 1, "at least 1"),
    ("opd", "data.num_prompts", lambda v: v >= 1, "at least 1"),
    ("generate", "max_new_tokens", lambda v: v >= 1, "at least 1"),
    ("generate", "batch_size", lambda v: v >= 1, "at least 1"),
    ("eval", "max_new_tokens", lambda v: v >= 1, "at least 1"),
    ("eval", "num_prompts", lambda v: v >= 1, "at least 1"),
    ("eval", "datasets", lambda v: len(v) >= 1, "at least one of humaneval, mtbench, sharegpt"),
    # Draft-OPD's result is held-out tau before and after; an SFT job may skip it (no best drafter)
    ("opd", "heldout.datasets", lambda v: len(v) >= 1,
     "at least one of humaneval, mtbench, sharegpt"),
    *((mode, key, lambda v: v >= 1, "at least 1") for mode in ("sft", "opd")
      for key in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints")),
    *((mode, key, lambda v: v >= 0, "0 (off) or more") for mode in ("sft", "opd")
      for key in ("train.flops_budget", "eval_every_flops", "data.skip")),
    *((mode, "train.final_lr_fraction", lambda v: 0 <= v <= 1, "between 0 and 1")
      for mode in ("sft", "opd")),
)


def _get(config: ml_collections.ConfigDict, dotted: str):
  value = config
  for part in dotted.split("."):
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      return None
    value = value[part]
  return value


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `UserError` for the first problem found."""
  mode = config.get("mode")
  for rule_mode, key, test, requirement in RULES:
    value = _get(config, key)
    if rule_mode == mode and value is not None and not test(value):
      raise UserError(f"config.{key}={value!r} must be {requirement}")


def check_memory(needed_bytes: float, what: str, fix: str) -> None:
  """On CPU, refuses a job whose largest activations would take over 80% of the memory."""
  if jax.default_backend() != "cpu":
    return
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if needed_bytes > 0.8 * total:
    raise UserError(f"{what} needs about {needed_bytes / 2**30:.0f} GiB of activations, more "
                    f"than this machine's {total / 2**30:.0f} GiB allow; {fix}")
