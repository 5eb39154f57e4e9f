"""DFlash block drafter (arXiv 2602.06036): one parallel pass proposes K-1 tokens.

The block input is the target's embedding of [anchor, MASK x (K-1)] at positions anchor..anchor+K-1.
Target hidden states from F layers are fused, `context = norm(fc(concat(features)))`, and enter
every drafter layer only as extra keys/values (each layer projects them with its own K/V weights).
A block sees the context strictly before its anchor and, bidirectionally, its own slots; output
goes through the drafter's own final norm (as in the reference; older drafters use the target's)
and the target's LM head (shared, frozen, never copied).

`proposal_logits` serves inference (one block per sequence) and training (many blocks per
sequence, each with its own anchor) alike; `block_logits` adds the anchor slot's.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from draftopd_jax.models import transformer
from draftopd_jax.models.config import ModelConfig, check_layer_ids
from draftopd_jax.models.layers import RMSNorm, SwiGLU, attention_probs, linear, random_params
from draftopd_jax.models.rope import apply_rope, inverse_frequencies


def default_layer_ids(num_target_layers: int, count: int) -> tuple[int, ...]:
  """`count` target layers uniformly spaced in [1, L-3] (the middle one when count is 1)."""
  if count == 1:
    return (num_target_layers // 2,)
  span = num_target_layers - 4
  return tuple(int(round(1 + i * span / (count - 1))) for i in range(count))


@dataclasses.dataclass(frozen=True)
class DFlashConfig:
  """Drafter shapes; hidden size, heads and RoPE follow the target it was made for."""

  num_layers: int
  block_size: int  # K: the anchor slot plus K-1 proposals
  target_layer_ids: tuple[int, ...]
  mask_token_id: int
  layer: ModelConfig  # per-layer shapes (Qwen3-style: q/k norm), hidden size = target's
  # The reference drafter normalises its output with its own trainable RMSNorm before the
  # target's LM head; drafters saved before this option reused the target's frozen final norm.
  own_final_norm: bool = False
  # The draft vocabulary: the target token ids (ascending) the drafter proposes from and is
  # trained on, through those rows of the target's LM head; () = the whole vocabulary. On CPU
  # the head over all of SmolLM2's 49K tokens was most of a training step and of a proposal.
  vocab_ids: tuple[int, ...] = ()

  @classmethod
  def for_target(cls, target: ModelConfig, *, num_layers: int = 2, block_size: int = 8,
                 mask_token_id: int, target_layer_ids: tuple[int, ...] | None = None,
                 num_taps: int | None = None, own_final_norm: bool = True,
                 vocab_ids: tuple[int, ...] = ()) -> "DFlashConfig":
    """`target_layer_ids`, or `num_taps` layers by the reference spacing (default: as many taps
    as drafter layers)."""
    if block_size < 2:
      raise ValueError(f"block_size must be >= 2 (anchor + proposals), got {block_size}")
    ids = tuple(target_layer_ids or default_layer_ids(target.num_layers, num_taps or num_layers))
    check_layer_ids(ids, target.num_layers)
    if not 0 <= mask_token_id < target.vocab_size:
      raise ValueError(f"mask_token_id {mask_token_id} is not a token id of the target "
                       f"(vocabulary {target.vocab_size})")
    vocab_ids = tuple(int(i) for i in vocab_ids)
    if vocab_ids and (list(vocab_ids) != sorted(set(vocab_ids)) or vocab_ids[0] < 0
                      or vocab_ids[-1] >= target.vocab_size):
      raise ValueError(f"vocab_ids must be distinct ascending token ids of the target "
                       f"(vocabulary {target.vocab_size})")
    layer = target.dense().replace(family="qwen3", qk_norm=True, qkv_bias=False, o_bias=False,
                                   num_layers=num_layers)
    return cls(num_layers=num_layers, block_size=block_size, target_layer_ids=ids,
               mask_token_id=mask_token_id, layer=layer, own_final_norm=own_final_norm,
               vocab_ids=vocab_ids)

  def to_dict(self) -> dict:
    return {"num_layers": self.num_layers, "block_size": self.block_size,
            "target_layer_ids": list(self.target_layer_ids), "mask_token_id": self.mask_token_id,
            "layer": self.layer.to_dict(), "own_final_norm": self.own_final_norm,
            "vocab_ids": list(self.vocab_ids)}

  @classmethod
  def from_dict(cls, d: dict) -> "DFlashConfig":
    return cls(num_layers=d["num_layers"], block_size=d["block_size"],
               target_layer_ids=tuple(d["target_layer_ids"]), mask_token_id=d["mask_token_id"],
               layer=ModelConfig.from_dict(d["layer"]),
               own_final_norm=d.get("own_final_norm", False),
               vocab_ids=tuple(d.get("vocab_ids", ())))

  @property
  def vocab_size(self) -> int:
    """Logits per proposal slot: the draft vocabulary's size, or the target's."""
    return len(self.vocab_ids) or self.layer.vocab_size

  def draft_ids(self) -> jax.Array | None:
    """The draft vocabulary as an array (draft id -> target id), or None for the whole one."""
    return jnp.asarray(self.vocab_ids, jnp.int32) if self.vocab_ids else None


class DFlashLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h = cfg.hidden_size, cfg.head_dim
    self.attn_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.q = linear(d, cfg.num_heads * h, False, cfg, rngs)
    self.k = linear(d, cfg.num_kv_heads * h, False, cfg, rngs)
    self.v = linear(d, cfg.num_kv_heads * h, False, cfg, rngs)
    self.o = linear(cfg.num_heads * h, d, False, cfg, rngs)
    self.q_norm = RMSNorm(h, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.k_norm = RMSNorm(h, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.mlp_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.mlp = SwiGLU(cfg, rngs)
    self.cfg = cfg

  def keys_values(self, x_BxTxD, positions_BxT, rope):
    """RoPE'd keys and values of `x` (context features or normed block states)."""
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    k_BxTxHkvxH = self.k_norm(self.k(x_BxTxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim))
    v_BxTxHkvxH = self.v(x_BxTxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    return apply_rope(k_BxTxHkvxH, positions_BxT, *rope), v_BxTxHkvxH

  def __call__(self, x_BxNxKxD, anchor_pos_BxN, ctx_k_BxSxHkvxH, ctx_v_BxSxHkvxH, rope):
    cfg = self.cfg
    b, n, k, d = x_BxNxKxD.shape
    groups = cfg.num_heads // cfg.num_kv_heads
    positions_BxNK = (anchor_pos_BxN[:, :, None] + jnp.arange(k)).reshape(b, n * k)
    normed_BxNKxD = self.attn_norm(x_BxNxKxD).reshape(b, n * k, d)
    q = self.q_norm(self.q(normed_BxNKxD).reshape(b, n * k, cfg.num_heads, cfg.head_dim))
    q = apply_rope(q, positions_BxNK, *rope).reshape(b, n, k, cfg.num_kv_heads, groups,
                                                     cfg.head_dim)
    blk_k, blk_v = self.keys_values(normed_BxNKxD, positions_BxNK, rope)
    blk_k = blk_k.reshape(b, n, k, cfg.num_kv_heads, cfg.head_dim)
    blk_v = blk_v.reshape(b, n, k, cfg.num_kv_heads, cfg.head_dim)

    scale = cfg.head_dim**-0.5
    ctx_scores = jnp.einsum("bnqcgh,bsch->bncgqs", q, ctx_k_BxSxHkvxH,
                            preferred_element_type=jnp.float32) * scale
    before_anchor_BxNxS = jnp.arange(ctx_k_BxSxHkvxH.shape[1]) < anchor_pos_BxN[:, :, None]
    blk_scores = jnp.einsum("bnqcgh,bnkch->bncgqk", q, blk_k,
                            preferred_element_type=jnp.float32) * scale
    ctx_probs, blk_probs = attention_probs(
        [ctx_scores, blk_scores], [before_anchor_BxNxS[:, :, None, None, None], None],
        ctx_v_BxSxHkvxH.dtype)
    out = (jnp.einsum("bncgqs,bsch->bnqcgh", ctx_probs, ctx_v_BxSxHkvxH)
           + jnp.einsum("bncgqk,bnkch->bnqcgh", blk_probs, blk_v))
    x_BxNxKxD = x_BxNxKxD + self.o(out.reshape(b, n, k, cfg.num_heads * cfg.head_dim))
    return x_BxNxKxD + self.mlp(self.mlp_norm(x_BxNxKxD))


class DFlash(nnx.Module):

  def __init__(self, cfg: DFlashConfig, *, rngs: nnx.Rngs):
    d = cfg.layer.hidden_size
    self.fc = linear(len(cfg.target_layer_ids) * d, d, False, cfg.layer, rngs)
    self.context_norm = RMSNorm(d, cfg.layer.rms_norm_eps, cfg.layer.jnp_dtype)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def stacked_layers(rngs: nnx.Rngs) -> DFlashLayer:
      return DFlashLayer(cfg.layer, rngs)

    self.layers = stacked_layers(rngs)
    if cfg.own_final_norm:
      self.final_norm = RMSNorm(d, cfg.layer.rms_norm_eps, cfg.layer.jnp_dtype)
    self.cfg = cfg

  def context_kv(self, features_BxTxFxD, positions_BxT):
    """Per-layer context keys/values [L, B, T, Kv, H] from target features at their positions."""
    b, t, f, d = features_BxTxFxD.shape
    context_BxTxD = self.context_norm(self.fc(features_BxTxFxD.reshape(b, t, f * d)))
    rope = inverse_frequencies(self.cfg.layer)
    graph, state = nnx.split(self.layers)
    return jax.vmap(lambda s: nnx.merge(graph, s).keys_values(context_BxTxD, positions_BxT, rope)
                    )(state)

  def __call__(self, x_BxNxKxD, anchor_pos_BxN, ctx_k_LxBxSxHkvxH, ctx_v_LxBxSxHkvxH):
    rope = inverse_frequencies(self.cfg.layer)
    graph, state = nnx.split(self.layers)

    def one_layer(x, per_layer):
      layer_state, ctx_k, ctx_v = per_layer
      return nnx.merge(graph, layer_state)(x, anchor_pos_BxN, ctx_k, ctx_v, rope), None

    x_BxNxKxD, _ = jax.lax.scan(one_layer, x_BxNxKxD, (state, ctx_k_LxBxSxHkvxH, ctx_v_LxBxSxHkvxH))
    return x_BxNxKxD


@flax.struct.dataclass
class ContextCache:
  """The drafter's per-layer context keys/values; slot p holds target position p."""

  k_LxBxSxHkvxH: jax.Array
  v_LxBxSxHkvxH: jax.Array

  @classmethod
  def create(cls, cfg: DFlashConfig, batch: int, max_len: int) -> "ContextCache":
    c = cfg.layer
    shape = (cfg.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
    return cls(jnp.zeros(shape, c.jnp_dtype), jnp.zeros(shape, c.jnp_dtype))


@functools.lru_cache(maxsize=None)
def _graph(cfg: DFlashConfig):
  return nnx.split(nnx.eval_shape(lambda: DFlash(cfg, rngs=nnx.Rngs(0))))[0]


def init_params(cfg: DFlashConfig, seed: int = 0) -> dict:
  return random_params(DFlash, cfg, seed)


def write_context(cfg: DFlashConfig, params: dict, cache: ContextCache,
                  features_BxTxFxD: jax.Array, positions_BxT: jax.Array) -> ContextCache:
  """Adds target features at `positions_BxT` to the context (slots past the cache are dropped)."""
  k_new, v_new = nnx.merge(_graph(cfg), params).context_kv(features_BxTxFxD, positions_BxT)
  batch_Bx1 = jnp.arange(positions_BxT.shape[0])[:, None]
  write = lambda cache_LxBxSxHkvxH, new_LxBxTxHkvxH: cache_LxBxSxHkvxH.at[:, batch_Bx1, positions_BxT].set(
      new_LxBxTxHkvxH, mode="drop")
  return ContextCache(write(cache.k_LxBxSxHkvxH, k_new), write(cache.v_LxBxSxHkvxH, v_new))


def block_states(cfg: DFlashConfig, params: dict, target_cfg: ModelConfig, target_params: dict,
                 anchor_tokens_BxN: jax.Array, anchor_pos_BxN: jax.Array,
                 cache: ContextCache) -> jax.Array:
  """The drafter's final-normed output [B, N, K, D] for N blocks per sequence, block n anchored
  at `anchor_pos_BxN[:, n]`: the target's LM head turns it into `block_logits`."""
  b, n = anchor_tokens_BxN.shape
  k = cfg.block_size
  tokens_BxNxK = jnp.concatenate(
      [anchor_tokens_BxN[..., None], jnp.full((b, n, k - 1), cfg.mask_token_id, jnp.int32)], -1)
  target = transformer.bind(target_cfg, target_params)
  drafter = nnx.merge(_graph(cfg), params)
  x_BxNxKxD = drafter(target.embed(tokens_BxNxK), anchor_pos_BxN, cache.k_LxBxSxHkvxH,
                      cache.v_LxBxSxHkvxH)
  return (drafter.final_norm if cfg.own_final_norm else target.final_norm)(x_BxNxKxD)


def block_logits(cfg: DFlashConfig, params: dict, target_cfg: ModelConfig, target_params: dict,
                 anchor_tokens_BxN: jax.Array, anchor_pos_BxN: jax.Array,
                 cache: ContextCache) -> jax.Array:
  """Logits [B, N, K, V] of N blocks per sequence, block n anchored at `anchor_pos_BxN[:, n]`.

  Slot k's logits predict the token at anchor + k (slot 0's are unused by decoding).
  """
  states_BxNxKxD = block_states(cfg, params, target_cfg, target_params, anchor_tokens_BxN,
                                anchor_pos_BxN, cache)
  return transformer.bind(target_cfg, target_params).lm_head_logits(states_BxNxKxD)


def proposal_logits(cfg: DFlashConfig, params: dict, target_cfg: ModelConfig, target_params: dict,
                    anchor_tokens_BxN: jax.Array, anchor_pos_BxN: jax.Array,
                    cache: ContextCache) -> jax.Array:
  """Logits [B, N, K-1, Vd] of slots 1..K-1 over the draft vocabulary (`cfg.vocab_ids`; all of
  the target's when empty). The anchor slot is never proposed, so the LM head skips it."""
  states_BxNxKxD = block_states(cfg, params, target_cfg, target_params, anchor_tokens_BxN,
                                anchor_pos_BxN, cache)
  return transformer.bind(target_cfg, target_params).lm_head_logits(states_BxNxKxD[:, :, 1:],
                                                                    cfg.draft_ids())
