"""A new (untrained) drafter from a job's `config.drafter`: the SFT job's starting point, and the
eval job's baseline."""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from draftopd_jax.errors import UserError
from draftopd_jax.models import ModelConfig, dflash, eagle3
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter


def drafter_config(c, target_cfg: ModelConfig, vocab_ids: tuple[int, ...] = ()
                   ) -> dflash.DFlashConfig | eagle3.Eagle3Config:
  """The config of a new drafter of `c.kind` (`config.drafter`), checked against the target; a
  DFlash drafter's draft vocabulary is `vocab_ids` (`new_drafter` picks them)."""
  if c.kind not in ("dflash", "eagle3"):
    raise UserError(f"config.drafter.kind={c.kind!r}; choose dflash or eagle3")
  layer_ids = tuple(c.target_layer_ids) or None
  try:
    if c.kind == "dflash":
      if not 0 <= c.draft_vocab_size <= target_cfg.vocab_size:
        raise ValueError(f"draft_vocab_size={c.draft_vocab_size} must be in [0, "
                         f"{target_cfg.vocab_size}] (0: the whole vocabulary)")
      return dflash.DFlashConfig.for_target(target_cfg, num_layers=c.num_layers,
                                            block_size=c.block_size,
                                            mask_token_id=c.mask_token_id,
                                            target_layer_ids=layer_ids,
                                            num_taps=c.get("num_taps") or None,
                                            own_final_norm=c.get("own_final_norm", True),
                                            vocab_ids=vocab_ids)
    return eagle3.Eagle3Config.for_target(target_cfg, block_size=c.block_size,
                                          draft_vocab_size=c.draft_vocab_size,
                                          target_layer_ids=layer_ids)
  except ValueError as e:
    raise UserError(f"config.drafter: {e}") from None


def new_drafter(c, target_cfg: ModelConfig, seed: int, token_counts_V: Callable[[], np.ndarray]
                ) -> tuple[DFlashDrafter | Eagle3Drafter, dict]:
  """(drafter, params) of `c.kind`, initialised from `seed`. The draft vocabulary (EAGLE-3's, or
  DFlash's when `draft_vocab_size` > 0) is the most frequent tokens by `token_counts_V()`,
  counted only then."""
  cfg = drafter_config(c, target_cfg)
  if isinstance(cfg, dflash.DFlashConfig):
    if c.draft_vocab_size:
      vocab = eagle3.build_draft_vocab(token_counts_V(), c.draft_vocab_size)
      cfg = drafter_config(c, target_cfg, tuple(vocab.tolist()))
    return DFlashDrafter(cfg), dflash.init_params(cfg, seed)
  d2t = eagle3.build_draft_vocab(token_counts_V(), cfg.draft_vocab_size)
  return Eagle3Drafter(cfg), {"model": eagle3.init_params(cfg, seed), "d2t": jnp.asarray(d2t)}
