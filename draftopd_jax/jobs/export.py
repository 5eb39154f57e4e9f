"""`main.py` mode `export`: a drafter checkpoint to a serving format (`io/export.py`) or to the
packed form the package ships, loaded back and its logits compared with the checkpoint's before
the job reports success."""

import dataclasses
import pathlib

import jax
import ml_dtypes
import numpy as np

from draftopd_jax.errors import UserError
from draftopd_jax.io import load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter, pack_drafter
from draftopd_jax.io.export import export_drafter
from draftopd_jax.io.import_drafter import import_drafter
from draftopd_jax.models import ModelConfig, dflash, eagle3
from draftopd_jax.models.drafters import DFlashDrafter


def drafter_logits(drafter, params, target_cfg: ModelConfig, target_params: dict,
                   seed: int = 0) -> np.ndarray:
  """The drafter's logits on a fixed random context: what a round trip must keep unchanged."""
  rng = np.random.default_rng(seed)
  b, s = 2, 24
  tokens = rng.integers(0, target_cfg.vocab_size, (b, s)).astype(np.int32)
  features = rng.standard_normal((b, s, len(drafter.cfg.target_layer_ids),
                                  target_cfg.hidden_size)).astype(np.float32)
  positions = np.broadcast_to(np.arange(s), (b, s))
  if isinstance(drafter, DFlashDrafter):
    cache = dflash.write_context(drafter.cfg, params, dflash.ContextCache.create(drafter.cfg, b, s),
                                 features, positions)
    anchors = np.array([[5, 12], [3, 16]])
    logits = dflash.block_logits(drafter.cfg, params, target_cfg, target_params,
                                 np.take_along_axis(tokens, anchors, 1), anchors, cache)
  else:
    feature = eagle3.bind(drafter.cfg, params["model"]).fuse(features)
    _, logits, _ = eagle3.step(drafter.cfg, params["model"], target_cfg, target_params, tokens,
                               feature, positions, eagle3.Eagle3Cache.create(drafter.cfg, b, s))
  return np.asarray(jax.device_get(logits))


def pack(config, workdir: str, model, drafter, params) -> dict:
  """The shipped form (bfloat16 weights, our checkpoint layout): loaded back, its logits must be
  exactly those of the checkpoint's weights rounded to bfloat16."""
  pack_drafter(config.drafter, workdir)
  back, back_params = load_drafter(workdir, model.cfg, model.tokenizer)
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(x.dtype)
                         if np.issubdtype(x.dtype, np.floating) else x, params)
  gap = float(np.abs(drafter_logits(back, back_params, model.cfg, model.params)
                     - drafter_logits(drafter, rounded, model.cfg, model.params)).max())
  if back != drafter or gap > 0:
    raise UserError(f"the packed drafter in {workdir} does not load back to the same drafter "
                    f"(logit gap {gap:.2e}); please report this")
  size = (pathlib.Path(workdir) / "params.safetensors").stat().st_size
  print(f"packed {type(drafter).__name__} into {workdir} ({size / 1e6:.1f} MB of bfloat16 "
        "weights; loads back exactly)")
  return {"format": "packed", "directory": workdir, "bytes": size, "max_logit_difference": gap}


def run_export(config, workdir: str | None) -> dict:
  """The `export` mode: the drafter checkpoint `config.drafter` to `workdir` in `config.format`,
  then loaded back and compared."""
  if not workdir:
    raise UserError("export writes a drafter to a folder: pass --workdir=DIR")
  if not config.drafter:
    raise UserError("pass the drafter checkpoint to export: --config.drafter=DIR")
  model = load_model(config.model, dtype=config.dtype)
  drafter, params = load_drafter(config.drafter, model.cfg, model.tokenizer)
  if config.format == "packed":
    return pack(config, workdir, model, drafter, params)
  fmt = config.format
  if fmt == "auto":
    fmt = "dflash" if isinstance(drafter, DFlashDrafter) else "eagle3"
  if isinstance(drafter, DFlashDrafter) and drafter.cfg.vocab_ids:
    print(f"note: the {fmt} format has no DFlash draft vocabulary; served from it, this drafter "
          f"proposes from all {model.cfg.vocab_size:,} tokens instead of its "
          f"{len(drafter.cfg.vocab_ids):,}")
    drafter = DFlashDrafter(dataclasses.replace(drafter.cfg, vocab_ids=()))
  out = export_drafter(workdir, fmt, drafter, params, model.cfg, model.params, config.verifier)
  back, back_params = import_drafter(out, model.cfg, model.params)
  gap = float(np.abs(drafter_logits(back, back_params, model.cfg, model.params)
                     - drafter_logits(drafter, params, model.cfg, model.params)).max())
  if back != drafter or gap > 1e-4:
    raise UserError(f"the export in {out} does not load back to the same drafter (logit gap "
                    f"{gap:.2e}); please report this")
  print(f"exported {type(drafter).__name__} to {out} in the {fmt} format (round trip: max logit "
        f"difference {gap:.1e})")
  return {"format": fmt, "directory": str(out), "max_logit_difference": gap}
