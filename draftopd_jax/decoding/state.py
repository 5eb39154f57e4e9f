"""The decoding loop's state (`DecodeState`, with its verify-step `Trace`) and row-level edits of
it: new prompts taking the places of finished sequences, groups of prefilled rows joined."""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from draftopd_jax.models import KVCache
from draftopd_jax.models.drafters import Drafter


@flax.struct.dataclass
class Trace:
  """Per sequence, per verify step n (unused steps: anchor -1, counts 0)."""

  anchor_pos_BxN: jax.Array
  accepted_BxN: jax.Array  # proposals the target accepted
  committed_BxN: jax.Array  # tokens appended (accepted + 1, cut by EOS or the length limit)
  proposals_BxNxK1: jax.Array
  proposal_logprob_BxNxK1: jax.Array
  num_steps_B: jax.Array
  # The target's full log-probs (temperature 1) at the proposal rows of each verify pass, when
  # asked for (Draft-OPD's full-vocabulary reverse KL needs them); else None.
  verify_logprobs_BxNxK1xV: jax.Array | None = None
  # With `record_teacher`: the target's log-prob of the token committed at offsets 1..K-1 (the
  # accepted proposals, then its own token) under the committed prefix; meaningless past the
  # committed count.
  committed_logprob_BxNxK1: jax.Array | None = None

  @classmethod
  def create(cls, batch: int, steps: int, k: int, record_vocab: int = 0,
             record_committed: bool = False) -> "Trace":
    zeros = lambda *shape, dtype=jnp.int32: jnp.zeros((batch, steps) + shape, dtype)
    return cls(anchor_pos_BxN=jnp.full((batch, steps), -1, jnp.int32), accepted_BxN=zeros(),
               committed_BxN=zeros(), proposals_BxNxK1=zeros(k - 1),
               proposal_logprob_BxNxK1=zeros(k - 1, dtype=jnp.float32),
               num_steps_B=jnp.zeros((batch,), jnp.int32),
               verify_logprobs_BxNxK1xV=(zeros(k - 1, record_vocab, dtype=jnp.float32)
                                         if record_vocab else None),
               committed_logprob_BxNxK1=(zeros(k - 1, dtype=jnp.float32)
                                         if record_committed else None))


@flax.struct.dataclass
class DecodeState:
  tokens_BxS: jax.Array  # prompt then generated tokens, left-aligned
  prompt_lens_B: jax.Array
  lengths_B: jax.Array  # committed tokens; the anchor is at lengths - 1
  done_B: jax.Array
  cache: KVCache
  drafter_state: Any
  rng: jax.Array
  step: jax.Array  # verify steps run (the prefill's token is not a step)
  trace: Trace
  # The target's hidden states at the drafter's layers, per position, when asked for: valid up to
  # the last verified token (lengths - 2); later positions hold states of rejected proposals.
  features_BxSxFxD: jax.Array | None = None



# The per-sequence fields of a state: everything but the shared RNG and step counter.
ROW_FIELDS = ("tokens_BxS", "prompt_lens_B", "lengths_B", "done_B", "cache", "drafter_state",
               "trace", "features_BxSxFxD")


@functools.partial(jax.jit, donate_argnames=("state",), static_argnames=("drafter_axes",))
def replace_rows(state: DecodeState, new: DecodeState, rows_R: jax.Array,
                 drafter_axes: tuple[int, ...] | None = None) -> DecodeState:
  """`state` with rows `rows_R` replaced by `new`'s rows 0..R-1 (a row index past the batch
  skips its row): new prompts take the places of finished sequences. Both states must have the
  same buffer length (`prefill`'s `cache_len`). Every row field has its rows on axis 0, except
  a drafter state's leaves may have them elsewhere: `drafter_axes` (`drafter_batch_axes`)."""
  def put(old, fresh, axis=0):
    return old.at[(slice(None),) * axis + (rows_R,)].set(fresh, mode="drop")

  old_leaves, tree = jax.tree.flatten(state.drafter_state)
  axes = drafter_axes or (0,) * len(old_leaves)
  drafter_state = jax.tree.unflatten(tree, [put(old, fresh, axis) for old, fresh, axis in zip(
      old_leaves, jax.tree.leaves(new.drafter_state), axes)])
  return state.replace(drafter_state=drafter_state, **{
      f: jax.tree.map(put, getattr(state, f), getattr(new, f))
      for f in ROW_FIELDS if f != "drafter_state"})


def drafter_batch_axes(drafter: Drafter, drafter_params, max_len: int) -> tuple[int, ...]:
  """The batch axis of each leaf of `drafter`'s decoding state (DFlash keeps its context cache
  layer-major, [L, B, ...]): the axis that grows from a 1-row state to a 2-row one."""
  shapes = [jax.tree.leaves(jax.eval_shape(lambda b=b: drafter.init_state(drafter_params, b,
                                                                          max_len)))
            for b in (1, 2)]
  return tuple(next(i for i, (x, y) in enumerate(zip(one.shape, two.shape)) if x != y)
               for one, two in zip(*shapes))


@functools.partial(jax.jit, static_argnums=1)
def empty_rows(part: DecodeState, batch: int, drafter_state) -> DecodeState:
  """A state of `batch` zeroed rows shaped like `part`'s (with a fresh `drafter_state`), for
  `replace_rows` to fill."""
  zeros = lambda a: jnp.zeros((batch,) + a.shape[1:], a.dtype)
  return part.replace(**{f: jax.tree.map(zeros, getattr(part, f)) for f in ROW_FIELDS
                         if f != "drafter_state"}, drafter_state=drafter_state)
