"""Token rows to the fixed-shape (tokens, mask) batches that the engine and the train steps take."""

import numpy as np

PROMPT_BUCKET = 32  # prompt widths are rounded up to this, so few shapes get compiled


def pad_batch(rows: list[list[int]], pad_id: int, left: bool = False, width: int | None = None,
              num_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, mask) of token rows padded to `width`, by default the longest row rounded up to
  PROMPT_BUCKET (a fixed width compiles a step once; a bucketed one, a few shapes). With
  `num_rows`, the rows past `rows` are one-token fillers (a pad token), so every row is a prompt."""
  width = width or -(-max(len(r) for r in rows) // PROMPT_BUCKET) * PROMPT_BUCKET
  tokens = np.full((num_rows or len(rows), width), pad_id, np.int32)
  mask = np.zeros((num_rows or len(rows), width), bool)
  mask[len(rows):, 0] = True
  for i, row in enumerate(rows):
    cols = slice(width - len(row), width) if left else slice(0, len(row))
    tokens[i, cols], mask[i, cols] = row, True
  return tokens, mask
