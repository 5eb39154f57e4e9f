"""Prompts to fixed-shape batches: chat templating and encoding, padding to bucketed widths."""

import numpy as np

from draftopd_jax.data.prompts import Prompt
from draftopd_jax.errors import UserError
from draftopd_jax.io import LoadedModel

PROMPT_BUCKET = 32  # prompt widths are rounded up to this, so few shapes get compiled


def encode_prompts(model: LoadedModel, prompts: list[Prompt], chat_template: bool
                   ) -> list[list[int]]:
  """Token ids of each prompt; a text prompt is one user turn, a chat prompt keeps its turns."""
  if chat_template:
    prompts = [model.tokenizer.apply_chat_template(
        [{"role": "user", "content": p}] if isinstance(p, str) else p) for p in prompts]
  elif any(not isinstance(p, str) for p in prompts):
    raise UserError("chat prompts (messages) need the chat template; set chat_template=True")
  return [model.tokenizer.encode(p) for p in prompts]


def pad_batch(rows: list[list[int]], pad_id: int, left: bool = False, width: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, mask) of token rows padded to `width`, by default the longest row rounded up to
  PROMPT_BUCKET (a fixed width compiles a step once; a bucketed one, a few shapes)."""
  width = width or -(-max(len(r) for r in rows) // PROMPT_BUCKET) * PROMPT_BUCKET
  tokens = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    cols = slice(width - len(row), width) if left else slice(0, len(row))
    tokens[i, cols], mask[i, cols] = row, True
  return tokens, mask
