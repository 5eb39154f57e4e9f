"""Batched autoregressive generation: the engine's loop with no drafter (K = 1).

This is the baseline speculative decoding is measured against, so it is literally the same loop.
"""

import numpy as np
from tqdm import tqdm

from draftopd_jax.decoding import engine
from draftopd_jax.models import ModelConfig, Params
from draftopd_jax.sampling import SamplingConfig


def generate(cfg: ModelConfig, params: Params, prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray,
             *, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             eos_ids: tuple[int, ...] = (), seed: int = 0, progress: tqdm | None = None,
             chunk: int | None = None, prefill_rows: int = engine.PREFILL_ROWS
             ) -> list[list[int]]:
  """Generates up to `max_new_tokens` per prompt; returns each row's new tokens (EOS included).

  Prompts may be left- or right-padded; `prompt_mask_BxP` marks the real tokens.
  """
  state = engine.run(cfg, params, prompt_BxP, prompt_mask_BxP, max_new_tokens=max_new_tokens,
                     sampling=sampling, eos_ids=eos_ids, seed=seed, progress=progress, chunk=chunk,
                     prefill_rows=prefill_rows)
  return engine.new_tokens(state)
