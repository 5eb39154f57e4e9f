"""Batched autoregressive decoding as a jitted `jax.lax.while_loop` over a fixed-shape state.

This is the baseline speculative decoding is measured against, so it is the same kind of loop:
prefill once, then one target forward per step, each sequence stopping on its own at EOS or at
its new-token limit. The loop runs on device; the host only wakes up every `chunk` steps to
report progress.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from draftopd_jax.decoding.sampling import SamplingConfig, sample
from draftopd_jax.models import KVCache, ModelConfig, Params, forward


@flax.struct.dataclass
class DecodeState:
  tokens_BxS: jax.Array  # prompt then generated tokens, left-aligned; S = prompt width + max new
  prompt_lens_B: jax.Array
  lengths_B: jax.Array  # committed tokens (prompt + generated); the next token goes at this slot
  done_B: jax.Array
  cache: KVCache
  rng: jax.Array
  step: jax.Array  # decode steps taken (the prefill's first token is not a step)


def left_align(tokens_BxP: jax.Array, mask_BxP: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Moves each row's real tokens to the front, so left- and right-padded prompts look alike."""
  order_BxP = jnp.argsort(~mask_BxP.astype(bool), axis=-1, stable=True)
  return jnp.take_along_axis(tokens_BxP, order_BxP, axis=-1), mask_BxP.sum(-1).astype(jnp.int32)


def _finished(tokens_B, lengths_B, prompt_lens_B, eos_ids, max_new_tokens):
  hit_eos_B = jnp.isin(tokens_B, jnp.asarray(eos_ids, jnp.int32)) if eos_ids else False
  return hit_eos_B | (lengths_B - prompt_lens_B >= max_new_tokens)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "sampling", "eos_ids"))
def prefill(cfg: ModelConfig, params: Params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
            rng: jax.Array, *, max_new_tokens: int, sampling: SamplingConfig,
            eos_ids: tuple[int, ...]) -> DecodeState:
  """Runs the prompt through the target and commits the first new token."""
  b, p = prompt_BxP.shape
  prompt_BxP, prompt_lens_B = left_align(prompt_BxP, prompt_mask_BxP)
  cache = KVCache.create(cfg, b, p + max_new_tokens)
  out = forward(cfg, params, prompt_BxP, jnp.broadcast_to(jnp.arange(p), (b, p)), cache)
  last_logits_BxV = jnp.take_along_axis(out.logits_BxTxV, (prompt_lens_B - 1)[:, None, None],
                                        axis=1)[:, 0]
  rng, key = jax.random.split(rng)
  first_B = sample(last_logits_BxV, key, sampling)
  tokens_BxS = jnp.zeros((b, p + max_new_tokens), jnp.int32).at[:, :p].set(prompt_BxP)
  tokens_BxS = tokens_BxS.at[jnp.arange(b), prompt_lens_B].set(first_B)
  lengths_B = prompt_lens_B + 1
  return DecodeState(tokens_BxS=tokens_BxS, prompt_lens_B=prompt_lens_B, lengths_B=lengths_B,
                     done_B=_finished(first_B, lengths_B, prompt_lens_B, eos_ids, max_new_tokens),
                     cache=out.cache, rng=rng, step=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "sampling", "eos_ids"),
                   donate_argnames=("state",))
def decode(cfg: ModelConfig, params: Params, state: DecodeState, stop_step: jax.Array, *,
           max_new_tokens: int, sampling: SamplingConfig, eos_ids: tuple[int, ...]) -> DecodeState:
  """Decodes until every sequence is done or `state.step` reaches `stop_step`."""
  batch_B = jnp.arange(state.tokens_BxS.shape[0])

  def keep_going(s: DecodeState) -> jax.Array:
    return ~jnp.all(s.done_B) & (s.step < stop_step)

  def one_token(s: DecodeState) -> DecodeState:
    last_B1 = (s.lengths_B - 1)[:, None]
    current_Bx1 = jnp.take_along_axis(s.tokens_BxS, last_B1, axis=1)
    out = forward(cfg, params, current_Bx1, last_B1, s.cache)
    rng, key = jax.random.split(s.rng)
    next_B = sample(out.logits_BxTxV[:, 0], key, sampling)
    # Finished rows keep recomputing their last token (same K/V, same slot) and commit nothing.
    write_B = jnp.where(s.done_B, s.tokens_BxS.shape[1], s.lengths_B)
    tokens_BxS = s.tokens_BxS.at[batch_B, write_B].set(next_B, mode="drop")
    lengths_B = s.lengths_B + (~s.done_B)
    done_B = s.done_B | _finished(next_B, lengths_B, s.prompt_lens_B, eos_ids, max_new_tokens)
    return DecodeState(tokens_BxS=tokens_BxS, prompt_lens_B=s.prompt_lens_B, lengths_B=lengths_B,
                       done_B=done_B, cache=out.cache, rng=rng, step=s.step + 1)

  return jax.lax.while_loop(keep_going, one_token, state)


def generate(cfg: ModelConfig, params: Params, prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray,
             *, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             eos_ids: tuple[int, ...] = (), seed: int = 0, progress: tqdm | None = None,
             chunk: int | None = None) -> list[list[int]]:
  """Generates up to `max_new_tokens` per prompt; returns each row's new tokens (EOS included).

  Prompts may be left- or right-padded; `prompt_mask_BxP` marks the real tokens. With `progress`,
  the loop returns to the host every `chunk` steps (default 16) to advance the bar by the tokens
  committed so far.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  statics = dict(max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=tuple(eos_ids))
  state = prefill(cfg, params, jnp.asarray(prompt_BxP, jnp.int32),
                  jnp.asarray(prompt_mask_BxP, bool), jax.random.key(seed), **statics)
  chunk = chunk or (16 if progress is not None else max_new_tokens)
  reported = 0
  while True:
    state = decode(cfg, params, state, state.step + chunk, **statics)
    if progress is not None:
      committed = int(jnp.sum(state.lengths_B - state.prompt_lens_B))
      progress.update(committed - reported)
      reported = committed
    if bool(jnp.all(state.done_B)):
      break
  tokens_BxS, prompt_lens_B, lengths_B = jax.device_get(
      (state.tokens_BxS, state.prompt_lens_B, state.lengths_B))
  return [row[p:n].tolist() for row, p, n in zip(tokens_BxS, prompt_lens_B, lengths_B)]
