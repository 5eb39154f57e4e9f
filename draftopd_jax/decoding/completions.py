"""Text in, text out: chat templating, batching into padded fixed shapes, progress."""

import numpy as np
from tqdm import tqdm

from draftopd_jax.data.prompts import Prompt
from draftopd_jax.decoding.generate import generate
from draftopd_jax.decoding.sampling import SamplingConfig
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


def pad_batch(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Pads token rows to a common width rounded up to PROMPT_BUCKET; returns (tokens, mask)."""
  width = -(-max(len(r) for r in rows) // PROMPT_BUCKET) * PROMPT_BUCKET
  tokens = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    cols = slice(width - len(row), width) if left else slice(0, len(row))
    tokens[i, cols], mask[i, cols] = row, True
  return tokens, mask


def complete(model: LoadedModel, prompts: list[Prompt], *, max_new_tokens: int,
             sampling: SamplingConfig = SamplingConfig(), batch_size: int = 8,
             chat_template: bool = True, max_prompt_tokens: int | None = None,
             seed: int = 0, show_progress: bool = True) -> list[str]:
  """Completes each prompt with the target; returns the decoded completions in order."""
  if not prompts:
    raise UserError("no prompts given; set config.prompts or config.prompts_file")
  encoded = encode_prompts(model, prompts, chat_template)
  limit = max_prompt_tokens or model.cfg.max_position_embeddings - max_new_tokens
  for i, ids in enumerate(encoded):
    if len(ids) > limit:
      raise UserError(f"prompt {i} has {len(ids)} tokens, more than the limit of {limit}; "
                      "shorten it or raise config.max_prompt_tokens")
  completions = []
  with tqdm(total=len(prompts) * max_new_tokens, unit="tok", disable=not show_progress,
            desc="generating") as bar:
    for start in range(0, len(encoded), batch_size):
      rows = encoded[start:start + batch_size]
      tokens, mask = pad_batch(rows, model.tokenizer.pad_id)
      new_tokens = generate(model.cfg, model.params, tokens, mask, max_new_tokens=max_new_tokens,
                            sampling=sampling, eos_ids=model.tokenizer.eos_ids, seed=seed + start,
                            progress=bar)
      bar.update(len(rows) * max_new_tokens - sum(len(t) for t in new_tokens))  # early stops
      completions += [model.tokenizer.decode(t) for t in new_tokens]
  return completions
