"""Speculative decoding as one jitted `jax.lax.while_loop` over a fixed-shape state.

Per step and sequence: the drafter proposes K-1 tokens after the anchor (the last committed
token), the target runs once on [anchor, proposals] on top of its KV cache, verify-and-accept
keeps a prefix and adds the target's own token, and the sequence advances by accepted + 1 (less if
EOS or the length limit falls inside the block). Sequences advance by different amounts; nothing
returns to the host inside the loop. With the `Autoregressive` drafter (K = 1) this is plain
autoregressive decoding, so speedups compare the same code path.

Every verify step is recorded in fixed-size per-sequence buffers (the trace Draft-OPD replays):
the anchor position, accepted and committed counts, the proposals and the target's log-prob of
each proposal from the verify pass. Asked to (`record_teacher`), it also keeps the target's
log-prob of each committed token, and the state the target's hidden states at the drafter's
layers for every verified position: what Draft-OPD trains on, without a second target pass.
"""

import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from draftopd_jax.decoding.padding import PROMPT_BUCKET, pad_batch
from draftopd_jax.decoding.state import (DecodeState, Trace, drafter_batch_axes, empty_rows,
                                         replace_rows)
from draftopd_jax.decoding.verify import verify
from draftopd_jax.models import KVCache, ModelConfig, Params, forward
from draftopd_jax.models.drafters import Autoregressive, Drafter
from draftopd_jax.models.transformer import split_layers
from draftopd_jax.sampling import SamplingConfig, sample


def left_align(tokens_BxP: jax.Array, mask_BxP: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Moves each row's real tokens to the front, so left- and right-padded prompts look alike."""
  order_BxP = jnp.argsort(~mask_BxP.astype(bool), axis=-1, stable=True)
  return jnp.take_along_axis(tokens_BxP, order_BxP, axis=-1), mask_BxP.sum(-1).astype(jnp.int32)


def _is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
  if not eos_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))


_STATICS = ("target_cfg", "drafter", "max_new_tokens", "sampling", "eos_ids", "verify_impl")


def buffer_length(prompt_width: int, max_new_tokens: int, block_size: int) -> int:
  """Token slots of a decoding buffer: the prompt, the new tokens, and room for the last verify
  block to overshoot."""
  return prompt_width + max_new_tokens + block_size


@functools.partial(jax.jit, static_argnames=_STATICS[:5] + ("record_verify_logprobs",
                                                            "record_teacher", "cache_len"))
def prefill(target_cfg: ModelConfig, target_params: Params, drafter: Drafter, drafter_params,
            prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, rng: jax.Array, *,
            max_new_tokens: int, sampling: SamplingConfig, eos_ids: tuple[int, ...],
            record_verify_logprobs: bool = False, record_teacher: bool = False,
            cache_len: int | None = None) -> DecodeState:
  """Runs the prompts through the target, commits the first new token, primes the drafter.
  `record_verify_logprobs` keeps the verify passes' full log-prob rows in the trace and
  `record_teacher` the committed tokens' log-probs and the target's hidden states (both for
  Draft-OPD; inference records neither). `cache_len` sets the
  buffer length (default: just enough), so states of different prompt widths can share rows."""
  b, p = prompt_BxP.shape
  k = drafter.block_size
  prompt_BxP, prompt_lens_B = left_align(prompt_BxP, prompt_mask_BxP)
  # Room for a whole block past the last token: verify writes K slots from the anchor.
  max_len = cache_len or buffer_length(p, max_new_tokens, k)
  if max_len < buffer_length(p, max_new_tokens, k):
    raise ValueError(f"cache_len {cache_len} < prompt width {p} + max_new_tokens "
                     f"{max_new_tokens} + block size {k}")
  positions_BxP = jnp.broadcast_to(jnp.arange(p), (b, p))
  out = forward(target_cfg, target_params, prompt_BxP, positions_BxP,
                KVCache.create(target_cfg, b, max_len), drafter.layer_ids,
                logits_at_BxM=(prompt_lens_B - 1)[:, None])
  last_logits_BxV = out.logits_BxTxV[:, 0]
  rng, key = jax.random.split(rng)
  first_B = sample(last_logits_BxV, key, sampling)
  tokens_BxS = jnp.zeros((b, max_len), jnp.int32).at[:, :p].set(prompt_BxP)
  tokens_BxS = tokens_BxS.at[jnp.arange(b), prompt_lens_B].set(first_B)
  lengths_B = prompt_lens_B + 1
  drafter_state = drafter.init_state(drafter_params, b, max_len)
  drafter_state = drafter.observe(drafter_params, (target_cfg, target_params), drafter_state,
                                  tokens_BxS, positions_BxP, out.hidden_BxTxFxD, prompt_lens_B)
  features_BxSxFxD = None
  if record_teacher:
    hidden_BxPxFxD = out.hidden_BxTxFxD
    features_BxSxFxD = jnp.zeros((b, max_len, *hidden_BxPxFxD.shape[2:]), hidden_BxPxFxD.dtype
                                 ).at[:, :p].set(hidden_BxPxFxD)
  return DecodeState(tokens_BxS=tokens_BxS, prompt_lens_B=prompt_lens_B, lengths_B=lengths_B,
                     done_B=_is_eos(first_B, eos_ids) | (max_new_tokens <= 1),
                     cache=out.cache, drafter_state=drafter_state, rng=rng,
                     step=jnp.zeros((), jnp.int32),
                     trace=Trace.create(b, max_new_tokens, k, target_cfg.vocab_size
                                        if record_verify_logprobs else 0, record_teacher),
                     features_BxSxFxD=features_BxSxFxD)


def _verify_step(target_cfg, target_params, target_layers, drafter, drafter_params,
                 s: DecodeState, *, max_new_tokens, sampling, eos_ids, verify_impl) -> DecodeState:
  k = drafter.block_size
  b = s.tokens_BxS.shape[0]
  target = (target_cfg, target_params)
  anchor_pos_B = s.lengths_B - 1
  anchor_B = jnp.take_along_axis(s.tokens_BxS, anchor_pos_B[:, None], axis=1)[:, 0]
  proposals_BxK1, drafter_state = drafter.propose(drafter_params, target, s.drafter_state,
                                                  s.tokens_BxS, anchor_pos_B)
  block_BxK = jnp.concatenate([anchor_B[:, None], proposals_BxK1], axis=1)
  positions_BxK = anchor_pos_B[:, None] + jnp.arange(k)
  out = forward(target_cfg, target_params, block_BxK, positions_BxK, s.cache, drafter.layer_ids,
                target_layers)
  rng, key = jax.random.split(s.rng)
  seed = jax.lax.bitcast_convert_type(jax.random.bits(key, dtype=jnp.uint32), jnp.int32)
  verdict = verify(out.logits_BxTxV, proposals_BxK1, seed, sampling, verify_impl)

  # Commit the accepted proposals and the target's token, then cut at EOS and at the limit.
  slots_K = jnp.arange(k)
  new_BxK = jnp.where(slots_K < verdict.accepted_B[:, None],
                      jnp.pad(proposals_BxK1, ((0, 0), (0, 1))), verdict.next_token_B[:, None])
  count_B = verdict.accepted_B + 1
  eos_BxK = _is_eos(new_BxK, eos_ids) & (slots_K < count_B[:, None])
  count_B = jnp.where(eos_BxK.any(1), jnp.argmax(eos_BxK, axis=1) + 1, count_B)
  room_B = max_new_tokens - (s.lengths_B - s.prompt_lens_B)
  count_B = jnp.where(s.done_B, 0, jnp.minimum(count_B, room_B))
  write_BxK = jnp.where(slots_K < count_B[:, None], s.lengths_B[:, None] + slots_K,
                        s.tokens_BxS.shape[1])  # out of range: dropped
  tokens_BxS = s.tokens_BxS.at[jnp.arange(b)[:, None], write_BxK].set(new_BxK, mode="drop")
  lengths_B = s.lengths_B + count_B
  hit_eos_B = (eos_BxK & (slots_K < count_B[:, None])).any(1)
  done_B = s.done_B | hit_eos_B | (lengths_B - s.prompt_lens_B >= max_new_tokens)
  drafter_state = drafter.observe(drafter_params, target, drafter_state, tokens_BxS,
                                  positions_BxK, out.hidden_BxTxFxD, lengths_B - 1)

  # Record the step for the sequences still running. Teacher log-probs are at temperature 1
  # (computed only when recorded: inference never pays for them).
  t = s.trace
  n_B = jnp.where(s.done_B, t.anchor_pos_BxN.shape[1], t.num_steps_B)  # done rows: dropped
  rows_B = jnp.arange(b)
  record = lambda buffer, value: None if buffer is None else buffer.at[rows_B, n_B].set(
      value(), mode="drop")
  logprobs_BxK1xV = lambda: jax.nn.log_softmax(out.logits_BxTxV[:, :-1].astype(jnp.float32), -1)
  trace = Trace(
      anchor_pos_BxN=t.anchor_pos_BxN.at[rows_B, n_B].set(anchor_pos_B, mode="drop"),
      accepted_BxN=t.accepted_BxN.at[rows_B, n_B].set(verdict.accepted_B, mode="drop"),
      committed_BxN=t.committed_BxN.at[rows_B, n_B].set(count_B, mode="drop"),
      proposals_BxNxK1=t.proposals_BxNxK1.at[rows_B, n_B].set(proposals_BxK1, mode="drop"),
      proposal_logprob_BxNxK1=t.proposal_logprob_BxNxK1.at[rows_B, n_B].set(
          verdict.proposal_logprob_BxK1, mode="drop"),
      num_steps_B=t.num_steps_B + (~s.done_B),
      verify_logprobs_BxNxK1xV=record(t.verify_logprobs_BxNxK1xV, logprobs_BxK1xV),
      committed_logprob_BxNxK1=record(t.committed_logprob_BxNxK1, lambda: jnp.take_along_axis(
          logprobs_BxK1xV(), new_BxK[:, :-1, None], axis=-1)[..., 0]))
  # The whole block's states: the committed ones stay, the rest are overwritten by later steps.
  features_BxSxFxD = None if s.features_BxSxFxD is None else s.features_BxSxFxD.at[
      rows_B[:, None], positions_BxK].set(out.hidden_BxTxFxD, mode="drop")
  return DecodeState(tokens_BxS=tokens_BxS, prompt_lens_B=s.prompt_lens_B, lengths_B=lengths_B,
                     done_B=done_B, cache=out.cache, drafter_state=drafter_state, rng=rng,
                     step=s.step + 1, trace=trace, features_BxSxFxD=features_BxSxFxD)


_LAYERS_BY_PARAMS: dict[int, tuple] = {}


def layer_params(target_cfg: ModelConfig, target_params: Params) -> tuple:
  """The target's per-layer weights (`split_layers`), made once per parameter tree and kept as
  long as it lives, for loops that call `decode` repeatedly. This copy doubles the target's
  layer weights in memory, the price of decoding steps that do not slice them again. Sliced
  eagerly: one small program per weight shape, where one jitted split of every layer took longer
  to compile (SmolLM2: 1.9 s) than the eager slices take to compile and run (1.0 s)."""
  leaf = jax.tree.leaves(target_params["layers"])[0]
  key = id(leaf)
  if key not in _LAYERS_BY_PARAMS:
    _LAYERS_BY_PARAMS[key] = split_layers(target_cfg, target_params)
    weakref.finalize(leaf, _LAYERS_BY_PARAMS.pop, key, None)
  return _LAYERS_BY_PARAMS[key]


@functools.partial(jax.jit, static_argnames=_STATICS, donate_argnames=("state",))
def decode(target_cfg: ModelConfig, target_params: Params, drafter: Drafter, drafter_params,
           state: DecodeState, stop_step: jax.Array, *, max_new_tokens: int,
           sampling: SamplingConfig, eos_ids: tuple[int, ...], verify_impl: str = "auto",
           target_layers: tuple | None = None) -> DecodeState:
  """Runs verify steps until every sequence is done or `state.step` reaches `stop_step`.

  `target_layers` (`layer_params`) saves slicing the target's layers on every call; without it
  they are sliced once here, before the loop, not per step.
  """
  if target_layers is None:
    target_layers = split_layers(target_cfg, target_params)
  body = functools.partial(_verify_step, target_cfg, target_params, target_layers, drafter,
                           drafter_params,
                           max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=eos_ids,
                           verify_impl=verify_impl)
  return jax.lax.while_loop(lambda s: ~jnp.all(s.done_B) & (s.step < stop_step), body, state)


# Rows per prefill group (`prefill_by_length`). 64 HumanEval chat prompts (8,677 tokens, 20,480
# when padded to the longest) prefilled in 61 s as one batch, 29 s in groups of 16, 23 s of 8 and
# 21 s of 4 (2 CPU cores, fp32).
PREFILL_ROWS = 4


def prefill_by_length(target_cfg: ModelConfig, target_params: Params, drafter: Drafter,
                      drafter_params, prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray,
                      rng: jax.Array, *, max_new_tokens: int, sampling: SamplingConfig,
                      eos_ids: tuple[int, ...], group_rows: int = PREFILL_ROWS) -> DecodeState:
  """`prefill` of a batch of mixed prompt lengths, `group_rows` rows at a time in order of length,
  each group padded only to its own longest prompt: the prefill then works on real tokens rather
  than padding. The groups share one buffer length and land in their rows of one state; greedy
  decoding from it is token for token that of a whole-batch prefill (each row's computation is
  the same; sampled tokens differ, as each group draws its own key)."""
  prompt_mask_BxP = np.asarray(prompt_mask_BxP, bool)
  lengths_B = prompt_mask_BxP.sum(1)
  b = len(lengths_B)
  order_B = np.argsort(lengths_B, kind="stable")
  groups = [order_B[i:i + group_rows] for i in range(0, b, group_rows)]
  real_rows = [np.asarray(row)[m].tolist() for row, m in zip(prompt_BxP, prompt_mask_BxP)]
  widest = -(-int(lengths_B.max()) // PROMPT_BUCKET) * PROMPT_BUCKET  # the last group's width
  cache_len = buffer_length(widest, max_new_tokens, drafter.block_size)
  axes = drafter_batch_axes(drafter, drafter_params, cache_len)
  state = None
  for rows_R, key in zip(groups, jax.random.split(rng, len(groups))):
    tokens_RxW, mask_RxW = pad_batch([real_rows[r] for r in rows_R], 0)
    part = prefill(target_cfg, target_params, drafter, drafter_params, tokens_RxW, mask_RxW, key,
                   max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=eos_ids,
                   cache_len=cache_len)
    if state is None:
      state = empty_rows(part, b, drafter.init_state(drafter_params, b, cache_len))
    state = replace_rows(state, part, jnp.asarray(rows_R, jnp.int32), axes)
  return state


def run(target_cfg: ModelConfig, target_params: Params, prompt_BxP: np.ndarray,
        prompt_mask_BxP: np.ndarray, *, drafter: Drafter | None = None, drafter_params=None,
        max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
        eos_ids: tuple[int, ...] = (), seed: int = 0, progress=None, chunk: int | None = None,
        verify_impl: str = "auto", prefill_rows: int = PREFILL_ROWS) -> DecodeState:
  """Decodes a batch to completion and returns the final state (tokens, lengths, trace).

  Without a drafter this is autoregressive decoding. With `progress` (anything with
  `update(n)`, such as tqdm) the loop returns to the host every `chunk` steps (default 16) to
  report the tokens committed so far. A batch of more than `prefill_rows` rows is prefilled
  that many rows at a time, in order of length (`prefill_by_length`).
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  drafter = drafter or Autoregressive()
  statics = dict(max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=tuple(eos_ids))
  target_layers = layer_params(target_cfg, target_params)
  if len(prompt_BxP) > prefill_rows:
    state = prefill_by_length(target_cfg, target_params, drafter, drafter_params, prompt_BxP,
                              prompt_mask_BxP, jax.random.key(seed), group_rows=prefill_rows,
                              **statics)
  else:
    state = prefill(target_cfg, target_params, drafter, drafter_params,
                    jnp.asarray(prompt_BxP, jnp.int32), jnp.asarray(prompt_mask_BxP, bool),
                    jax.random.key(seed), **statics)
  chunk = chunk or (16 if progress is not None else max_new_tokens)
  reported = 0
  while True:
    state = decode(target_cfg, target_params, drafter, drafter_params, state, state.step + chunk,
                   verify_impl=verify_impl, target_layers=target_layers, **statics)
    if progress is not None:
      committed = int(jnp.sum(state.lengths_B - state.prompt_lens_B))
      progress.update(committed - reported)
      reported = committed
    if bool(jnp.all(state.done_B)):
      return state


def new_tokens(state: DecodeState) -> list[list[int]]:
  """Each row's generated tokens (EOS included)."""
  tokens_BxS, prompt_lens_B, lengths_B = jax.device_get(
      (state.tokens_BxS, state.prompt_lens_B, state.lengths_B))
  return [row[p:n].tolist() for row, p, n in zip(tokens_BxS, prompt_lens_B, lengths_B)]
