"""Drafter checkpoints: weights through orbax, the architecture and its target in JSON.

A drafter only makes sense for the target it was built for (hidden size, layer ids, vocabulary)
and its tokenizer (the same ids must mean the same tokens), so both fingerprints are stored and
checked on load.

Drafters shipped with the package (`zoo.DRAFTER_ZOO`) are the same folder with the weights packed
into one bfloat16 `params.safetensors` (`pack_drafter`): half the bytes, one file in git. They
load in the dtype of the drafter's config.
"""

import json
import pathlib

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from safetensors.numpy import load_file, save_file

from draftopd_jax.errors import UserError
from draftopd_jax.io import zoo
from draftopd_jax.io.tokenizer import Tokenizer
from draftopd_jax.models import ModelConfig, dflash, eagle3
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.parallel import distributed

KINDS = {"dflash": (DFlashDrafter, dflash.DFlashConfig), "eagle3": (Eagle3Drafter, eagle3.Eagle3Config)}
_META = "drafter.json"
_PACKED = "params.safetensors"


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


def read_meta(name_or_path: str | pathlib.Path) -> tuple[pathlib.Path, dict]:
  """(folder, drafter.json) of a drafter zoo name or checkpoint folder."""
  directory = zoo.resolve_drafter(str(name_or_path)).absolute()
  if not (directory / _META).is_file():
    raise UserError(f"{directory} is not a drafter checkpoint (no {_META})")
  return directory, json.loads((directory / _META).read_text())


def load_drafter(name_or_path: str | pathlib.Path, target_cfg: ModelConfig,
                 tokenizer: Tokenizer | None = None):
  """Returns (drafter, params) of a zoo name or checkpoint folder; refuses a checkpoint made for
  another target or tokenizer."""
  directory, meta = read_meta(name_or_path)
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
  if (directory / _PACKED).is_file():
    dtype = drafter.cfg.layer.jnp_dtype
    restored = zoo.unflatten({k: v.astype(dtype) if v.dtype == ml_dtypes.bfloat16 else v
                              for k, v in load_file(directory / _PACKED).items()})
  else:
    restored = ocp.StandardCheckpointer().restore(directory / "params")
  return drafter, jax.tree.map(np.asarray, restored)


def pack_drafter(source: str | pathlib.Path, destination: str | pathlib.Path) -> None:
  """Copies a drafter checkpoint with its floating-point weights in one bfloat16 safetensors file
  (the shipped form); integer arrays such as EAGLE-3's vocabulary map are kept exact."""
  directory, meta = read_meta(source)
  params = ocp.StandardCheckpointer().restore(directory / "params")
  flat = {k: v.astype(ml_dtypes.bfloat16) if np.issubdtype(v.dtype, np.floating) else v
          for k, v in zoo.flatten(jax.tree.map(np.asarray, params)).items()}
  destination = pathlib.Path(destination)
  destination.mkdir(parents=True, exist_ok=True)
  save_file(flat, destination / _PACKED)
  (destination / _META).write_text(json.dumps(meta, indent=1))
