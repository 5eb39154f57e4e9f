"""Drafter checkpoints: weights through orbax, the architecture and its target in JSON.

A drafter only makes sense for the target it was built for (hidden size, layer ids, vocabulary)
and its tokenizer (the same ids must mean the same tokens), so both fingerprints are stored and
checked on load.
"""

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from draftopd_jax.decoding.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.errors import UserError
from draftopd_jax.io.tokenizer import Tokenizer
from draftopd_jax.models import ModelConfig, dflash, eagle3
from draftopd_jax.parallel import distributed

KINDS = {"dflash": (DFlashDrafter, dflash.DFlashConfig), "eagle3": (Eagle3Drafter, eagle3.Eagle3Config)}
_META = "drafter.json"


def target_fingerprint(cfg: ModelConfig) -> dict:
  return {"family": cfg.family, "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
          "vocab_size": cfg.vocab_size}


def kind_of(drafter) -> str:
  return next(k for k, (cls, _) in KINDS.items() if isinstance(drafter, cls))


def save_drafter(directory: str | pathlib.Path, drafter, params, target_cfg: ModelConfig,
                 tokenizer: Tokenizer | None = None) -> None:
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  params = distributed.host_copy(params)  # whole arrays, also from a multi-process run
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / "params", params, force=True)
  checkpointer.wait_until_finished()
  meta = {"kind": kind_of(drafter), "config": drafter.cfg.to_dict(),
          "target": target_fingerprint(target_cfg),
          "tokenizer": tokenizer.fingerprint if tokenizer else None}
  (directory / _META).write_text(json.dumps(meta, indent=1))


def load_drafter(directory: str | pathlib.Path, target_cfg: ModelConfig,
                 tokenizer: Tokenizer | None = None):
  """Returns (drafter, params); refuses a checkpoint made for another target or tokenizer."""
  directory = pathlib.Path(directory).absolute()
  if not (directory / _META).is_file():
    raise UserError(f"{directory} is not a drafter checkpoint (no {_META})")
  meta = json.loads((directory / _META).read_text())
  if meta["target"] != target_fingerprint(target_cfg):
    raise UserError(f"drafter {directory} was made for target {meta['target']}, not for "
                    f"{target_fingerprint(target_cfg)}; pass the matching config.model")
  saved_tokenizer = meta.get("tokenizer")
  if tokenizer is not None and saved_tokenizer and saved_tokenizer != tokenizer.fingerprint:
    raise UserError(f"drafter {directory} was trained with another tokenizer (vocabulary "
                    f"{saved_tokenizer}, the target's is {tokenizer.fingerprint}); pass the "
                    "matching config.model")
  drafter_cls, config_cls = KINDS[meta["kind"]]
  drafter = drafter_cls(config_cls.from_dict(meta["config"]))
  restored = ocp.StandardCheckpointer().restore(directory / "params")
  return drafter, jax.tree.map(np.asarray, restored)
