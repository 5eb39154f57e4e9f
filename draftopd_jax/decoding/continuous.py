"""Continuous batching for bulk generation (regenerating a corpus): a finished row takes the next
prompt instead of idling until the longest row of its batch ends.

The decoding loop returns to the host every `chunk` steps. Finished rows hand over their tokens,
and once `refill_rows` rows are free (or no prompt is left to wait for) the next prompts, in the
order given, are prefilled together and written into the free rows (`replace_rows`). All
rows share one buffer length, fixed by the longest prompt, so the decoding step compiles once;
prefills compile once per prompt-width bucket. Greedy output equals batch-by-batch generation.
"""

import collections

import jax
import numpy as np

from draftopd_jax.decoding import engine
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding.state import replace_rows
from draftopd_jax.models import ModelConfig, Params
from draftopd_jax.models.drafters import Autoregressive
from draftopd_jax.sampling import SamplingConfig

WIDTH_BUCKET = 64  # prompt widths are padded up to a multiple of this: few prefill shapes


def _bucket(rows: list[list[int]]) -> int:
  """The longest row, rounded up to WIDTH_BUCKET."""
  return -(-max(len(r) for r in rows) // WIDTH_BUCKET) * WIDTH_BUCKET


def generate_all(target_cfg: ModelConfig, target_params: Params, prompts: list[list[int]], *,
                 batch_size: int, max_new_tokens: int, pad_id: int,
                 eos_ids: tuple[int, ...] = (), sampling: SamplingConfig = SamplingConfig(),
                 seed: int = 0, refill_rows: int = 8, chunk: int = 16, progress=None
                 ) -> tuple[list[list[int]], int]:
  """Each prompt's new tokens (EOS included), in prompt order, and the decode slots spent
  (steps x rows, the work of the loop: idle rows count too)."""
  if not prompts:
    return [], 0
  drafter = Autoregressive()
  cache_len = engine.buffer_length(_bucket(prompts), max_new_tokens, drafter.block_size)
  statics = dict(max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=tuple(eos_ids))
  target_layers = engine.layer_params(target_cfg, target_params)
  batch_size = min(batch_size, len(prompts))
  refill_rows = min(refill_rows, batch_size)

  def prefill(indices: list[int], num_rows: int) -> engine.DecodeState:
    rows = [prompts[i] for i in indices]
    tokens, mask = pad_batch(rows, pad_id, width=_bucket(rows), num_rows=num_rows)
    return engine.prefill(target_cfg, target_params, drafter, None, tokens, mask,
                          jax.random.key(seed + indices[0]), cache_len=cache_len, **statics)

  pending = collections.deque(range(len(prompts)))
  owner = [pending.popleft() for _ in range(batch_size)]  # prompt index of each row, or -1
  state = prefill(owner, batch_size)
  outputs: list[list[int] | None] = [None] * len(prompts)
  slots = batch_size  # the prefill's tokens
  reported = 0
  while True:
    step = int(state.step)
    state = engine.decode(target_cfg, target_params, drafter, None, state, step + chunk,
                          target_layers=target_layers, **statics)
    slots += (int(state.step) - step) * batch_size
    done_B, lengths_B, prompt_lens_B = jax.device_get(
        (state.done_B, state.lengths_B, state.prompt_lens_B))
    if progress is not None:
      committed = sum(len(o) for o in outputs if o is not None) + int(sum(
          n - p for n, p, o in zip(lengths_B, prompt_lens_B, owner) if o >= 0))
      progress.update(committed - reported)
      reported = committed
    finished = [r for r in range(batch_size) if owner[r] >= 0 and done_B[r]]
    if finished:
      tokens_BxS = np.asarray(jax.device_get(state.tokens_BxS))
      for r in finished:
        outputs[owner[r]] = tokens_BxS[r, prompt_lens_B[r]:lengths_B[r]].tolist()
        owner[r] = -1
    free = [r for r in range(batch_size) if owner[r] < 0]
    while pending and (len(free) >= refill_rows or len(free) >= len(pending)
                       or len(free) == batch_size):
      take = [pending.popleft() for _ in range(min(refill_rows, len(free), len(pending)))]
      rows, free = free[:len(take)], free[len(take):]
      rows_R = np.full(refill_rows, batch_size, np.int32)  # past the batch: skipped
      rows_R[:len(rows)] = rows
      state = replace_rows(state, prefill(take, refill_rows), rows_R)
      slots += refill_rows
      for r, i in zip(rows, take):
        owner[r] = i
    if not pending and all(o < 0 for o in owner):
      return outputs, slots
