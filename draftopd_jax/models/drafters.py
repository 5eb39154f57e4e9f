"""Drafters as the decoding engine sees them: propose a block, observe what was committed.

Each drafter is a frozen (hashable) dataclass, a static argument of the jitted loop; its weights
and buffers are a pytree passed beside it. The engine calls, per verify step:

* `propose(params, target, state, tokens_BxS, anchor_pos_B) -> (proposals_BxK1, state)`: the
  K-1 tokens after each sequence's anchor (its last committed token, at `anchor_pos_B`);
* `observe(params, target, state, tokens_BxS, positions_BxT, features_BxTxFxD, anchor_pos_B)`:
  the target just ran on `positions_BxT` and returned hidden states of `layer_ids` there; those at
  positions before the new anchor belong to committed tokens. Prefill observes the prompt.

Stale drafter state past a sequence's anchor is never read (it is overwritten first), the same
roll-back-by-position rule as the target's KV cache.
"""

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from draftopd_jax.models import KVCache, ModelConfig, dflash, eagle3, forward
from draftopd_jax.models.transformer import split_layers

Target = tuple[ModelConfig, dict]  # (config, params) of the frozen target


class Drafter(Protocol):
  """What the engine, the training steps, checkpoints and export need of a drafter."""

  @property
  def block_size(self) -> int: ...  # K: the anchor slot and K-1 proposals

  @property
  def layer_ids(self) -> tuple[int, ...]: ...  # target layers whose outputs it observes

  def init_state(self, params, batch: int, max_len: int) -> Any: ...

  def propose(self, params, target: Target, state, tokens_BxS: jax.Array, anchor_pos_B: jax.Array
              ) -> tuple[jax.Array, Any]: ...

  def observe(self, params, target: Target, state, tokens_BxS: jax.Array,
              positions_BxT: jax.Array, features_BxTxFxD: jax.Array, anchor_pos_B: jax.Array
              ) -> Any: ...


def gather_positions(tokens_BxS: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """tokens[b, positions[b, t]], clamped at the buffer end."""
  return jnp.take_along_axis(tokens_BxS, jnp.clip(positions_BxT, 0, tokens_BxS.shape[1] - 1), 1)


@dataclasses.dataclass(frozen=True)
class Autoregressive:
  """No drafter: K = 1, every verify step commits the target's own next token."""

  block_size: int = 1
  layer_ids: tuple[int, ...] = ()

  def init_state(self, params, batch: int, max_len: int):
    return ()

  def propose(self, params, target, state, tokens_BxS, anchor_pos_B):
    return jnp.zeros((anchor_pos_B.shape[0], 0), jnp.int32), state

  def observe(self, params, target, state, tokens_BxS, positions_BxT, features, anchor_pos_B):
    return state


@dataclasses.dataclass(frozen=True)
class Oracle:
  """Proposes a known continuation (params: tokens [B, S] aligned with positions); with the
  target's own greedy output every proposal is accepted, so tau = K."""

  block_size: int
  layer_ids: tuple[int, ...] = ()

  def init_state(self, params, batch: int, max_len: int):
    return ()

  def propose(self, params, target, state, tokens_BxS, anchor_pos_B):
    positions_BxK1 = anchor_pos_B[:, None] + jnp.arange(1, self.block_size)
    return gather_positions(params, positions_BxK1), state

  def observe(self, params, target, state, tokens_BxS, positions_BxT, features, anchor_pos_B):
    return state


@dataclasses.dataclass(frozen=True)
class Truncated:
  """`inner`'s first `block_size - 1` proposals only: a shorter verify pass. Where a verify pass
  costs more with every row, as on CPUs (SmolLM2-135M on 2 cores, ad hoc with an oracle drafter:
  1.5 autoregressive steps for 2 rows, 2.2 for 8), a drafter whose later proposals are rarely accepted decodes faster with
  fewer of them verified. Lossless, as every drafter is; the inner drafter still drafts its
  whole block (a DFlash block is trained as one)."""

  inner: Drafter
  block_size: int

  def __post_init__(self):
    if not 2 <= self.block_size <= self.inner.block_size:
      raise ValueError(f"a truncated block must keep the anchor and at least one proposal, at "
                       f"most the drafter's {self.inner.block_size} slots; got {self.block_size}")

  @property
  def layer_ids(self) -> tuple[int, ...]:
    return self.inner.layer_ids

  def init_state(self, params, batch: int, max_len: int):
    return self.inner.init_state(params, batch, max_len)

  def propose(self, params, target, state, tokens_BxS, anchor_pos_B):
    proposals_BxK1, state = self.inner.propose(params, target, state, tokens_BxS, anchor_pos_B)
    return proposals_BxK1[:, :self.block_size - 1], state

  def observe(self, params, target, state, tokens_BxS, positions_BxT, features, anchor_pos_B):
    return self.inner.observe(params, target, state, tokens_BxS, positions_BxT, features,
                              anchor_pos_B)


@dataclasses.dataclass(frozen=True)
class _ConfiguredDrafter:
  """A drafter whose block size and target layers come from its model config."""

  cfg: Any

  @property
  def block_size(self) -> int:
    return self.cfg.block_size

  @property
  def layer_ids(self) -> tuple[int, ...]:
    return self.cfg.target_layer_ids


@dataclasses.dataclass(frozen=True)
class DFlashDrafter(_ConfiguredDrafter):
  cfg: dflash.DFlashConfig

  def init_state(self, params, batch: int, max_len: int) -> dflash.ContextCache:
    return dflash.ContextCache.create(self.cfg, batch, max_len)

  def propose(self, params, target: Target, cache, tokens_BxS, anchor_pos_B):
    anchors_Bx1 = gather_positions(tokens_BxS, anchor_pos_B[:, None])
    logits_Bx1xK1xVd = dflash.proposal_logits(self.cfg, params, *target, anchors_Bx1,
                                              anchor_pos_B[:, None], cache)
    proposals_BxK1 = jnp.argmax(logits_Bx1xK1xVd[:, 0], axis=-1).astype(jnp.int32)
    d2t_Vd = self.cfg.draft_ids()
    return (proposals_BxK1 if d2t_Vd is None else d2t_Vd[proposals_BxK1]), cache

  def observe(self, params, target, cache, tokens_BxS, positions_BxT, features_BxTxFxD,
              anchor_pos_B):
    return dflash.write_context(self.cfg, params, cache, features_BxTxFxD, positions_BxT)


@dataclasses.dataclass(frozen=True)
class Eagle3Drafter(_ConfiguredDrafter):
  """params: {"model": Eagle3 weights, "d2t": [Vd] target ids of the draft vocabulary}."""

  cfg: eagle3.Eagle3Config

  def init_state(self, params, batch: int, max_len: int) -> dict[str, Any]:
    d = self.cfg.layer.hidden_size
    return {"cache": eagle3.Eagle3Cache.create(self.cfg, batch, max_len),
            "hidden_BxD": jnp.zeros((batch, d), self.cfg.layer.jnp_dtype),
            "first_B": jnp.zeros((batch,), jnp.int32)}

  def observe(self, params, target, state, tokens_BxS, positions_BxT, features_BxTxFxD,
              anchor_pos_B):
    # Position p pairs the target feature at p with the token at p + 1; the last such pair
    # before the anchor (p = anchor - 1) yields the first proposal and the hidden state to feed.
    feature_BxTxD = eagle3.bind(self.cfg, params["model"]).fuse(features_BxTxFxD)
    next_tokens_BxT = gather_positions(tokens_BxS, positions_BxT + 1)
    hidden_BxTxD, logits_BxTxVd, cache = eagle3.step(
        self.cfg, params["model"], *target, next_tokens_BxT, feature_BxTxD, positions_BxT,
        state["cache"])
    last_Bx1 = (anchor_pos_B - 1 - positions_BxT[:, 0])[:, None]
    hidden_BxD = jnp.take_along_axis(hidden_BxTxD, last_Bx1[..., None], axis=1)[:, 0]
    draft_id_B = jnp.take_along_axis(jnp.argmax(logits_BxTxVd, -1), last_Bx1, axis=1)[:, 0]
    return {"cache": cache, "hidden_BxD": hidden_BxD, "first_B": params["d2t"][draft_id_B]}

  def propose(self, params, target, state, tokens_BxS, anchor_pos_B):
    def draft_step(carry, offset):
      token_B, hidden_BxD, cache = carry
      positions_Bx1 = (anchor_pos_B + offset)[:, None]
      hidden_Bx1xD, logits_Bx1xVd, cache = eagle3.step(
          self.cfg, params["model"], *target, token_B[:, None], hidden_BxD[:, None],
          positions_Bx1, cache)
      next_B = params["d2t"][jnp.argmax(logits_Bx1xVd[:, 0], -1)]
      return (next_B, hidden_Bx1xD[:, 0], cache), next_B

    first_B = state["first_B"]
    _, rest_K2xB = jax.lax.scan(draft_step, (first_B, state["hidden_BxD"], state["cache"]),
                                jnp.arange(self.block_size - 2))
    # The draft steps' cache writes sit past the anchor; observe() overwrites them.
    proposals_BxK1 = jnp.concatenate([first_B[:, None], rest_K2xB.T], axis=1)
    return proposals_BxK1.astype(jnp.int32), state


@dataclasses.dataclass(frozen=True)
class DraftModel:
  """A smaller causal LM of the target family with the same vocabulary (transformers' assisted
  generation, vLLM's draft model): the baseline a trained drafter has to beat. params
  (`draft_model_params`): its weights and their per-layer split. It sees only tokens: `observe`
  writes the committed tokens into its own KV cache, `propose` runs it K-1 times from the anchor.
  Its cache rolls back by position, like the target's: slots past the anchor are rewritten
  before any query reads them."""

  cfg: ModelConfig
  block_size: int
  target_vocab_size: int  # proposals stay below it, even if the draft model pads its vocabulary
  layer_ids: tuple[int, ...] = ()

  def init_state(self, params, batch: int, max_len: int) -> KVCache:
    return KVCache.create(self.cfg, batch, max_len)

  def _forward(self, params, tokens_BxT, positions_BxT, cache, **kwargs):
    return forward(self.cfg, params["model"], tokens_BxT, positions_BxT, cache,
                   layer_params=params["layers"], **kwargs)

  def observe(self, params, target, cache, tokens_BxS, positions_BxT, features, anchor_pos_B):
    return self._forward(params, gather_positions(tokens_BxS, positions_BxT), positions_BxT, cache,
                         logits_at_BxM=jnp.zeros_like(positions_BxT[:, :1])).cache  # 1 row: unused

  def propose(self, params, target, cache, tokens_BxS, anchor_pos_B):
    def draft_step(carry, offset):
      token_B, cache = carry
      out = self._forward(params, token_B[:, None], (anchor_pos_B + offset)[:, None], cache)
      next_B = jnp.argmax(out.logits_BxTxV[:, 0, :self.target_vocab_size], -1).astype(jnp.int32)
      return (next_B, out.cache), next_B

    anchor_B = gather_positions(tokens_BxS, anchor_pos_B[:, None])[:, 0]
    (_, cache), proposals_K1xB = jax.lax.scan(draft_step, (anchor_B, cache),
                                              jnp.arange(self.block_size - 1))
    return proposals_K1xB.T, cache


def draft_model_params(cfg: ModelConfig, params: dict) -> dict[str, Any]:
  """A draft model's params as `DraftModel` takes them: split into layers once, here, because a
  decoding loop that sliced them on every call would copy each layer's weights per token."""
  return {"model": params, "layers": split_layers(cfg, params)}
