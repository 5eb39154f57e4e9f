"""EAGLE-3 drafter (arXiv 2503.01840): one decoder layer on fused target features.

Position t takes the fused feature g_t = fc(concat(low, mid, high target hidden states)) and the
target's embedding of token t+1, attends causally over earlier positions, and predicts token t+2
over a reduced draft vocabulary (`d2t` maps draft ids to target ids). Drafting feeds the layer's
own output hidden state back in place of g for the next position.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from draftopd_jax.models import transformer
from draftopd_jax.models.config import ModelConfig, check_layer_ids
from draftopd_jax.models.layers import (Attention, RMSNorm, SwiGLU, attention_probs, linear,
                                     random_params)
from draftopd_jax.models.rope import apply_rope, inverse_frequencies


def default_layer_ids(num_target_layers: int) -> tuple[int, int, int]:
  """Low / mid / high target layers, as the Draft-OPD code picks them."""
  return (1, num_target_layers // 2 - 1, num_target_layers - 4)


@dataclasses.dataclass(frozen=True)
class Eagle3Config:
  block_size: int  # anchor + block_size - 1 autoregressive draft steps per verify
  target_layer_ids: tuple[int, ...]
  draft_vocab_size: int
  layer: ModelConfig  # attention/MLP shapes; hidden size = target's

  @classmethod
  def for_target(cls, target: ModelConfig, *, block_size: int = 8, draft_vocab_size: int = 8192,
                 target_layer_ids: tuple[int, ...] | None = None) -> "Eagle3Config":
    if block_size < 2:
      raise ValueError(f"block_size must be >= 2 (anchor + proposals), got {block_size}")
    if not 0 < draft_vocab_size <= target.vocab_size:
      raise ValueError(f"draft_vocab_size must be in [1, {target.vocab_size}], got {draft_vocab_size}")
    layer = target.dense().replace(num_layers=1, qkv_bias=False, o_bias=False, qk_norm=False)
    ids = tuple(target_layer_ids or default_layer_ids(target.num_layers))
    check_layer_ids(ids, target.num_layers)
    return cls(block_size=block_size, target_layer_ids=ids, draft_vocab_size=draft_vocab_size,
               layer=layer)

  def to_dict(self) -> dict:
    return {"block_size": self.block_size, "target_layer_ids": list(self.target_layer_ids),
            "draft_vocab_size": self.draft_vocab_size, "layer": self.layer.to_dict()}

  @classmethod
  def from_dict(cls, d: dict) -> "Eagle3Config":
    return cls(block_size=d["block_size"], target_layer_ids=tuple(d["target_layer_ids"]),
               draft_vocab_size=d["draft_vocab_size"], layer=ModelConfig.from_dict(d["layer"]))


class Eagle3(nnx.Module):

  def __init__(self, cfg: Eagle3Config, *, rngs: nnx.Rngs):
    c = cfg.layer
    d = c.hidden_size
    self.fc = linear(len(cfg.target_layer_ids) * d, d, False, c, rngs)
    self.embed_norm = RMSNorm(d, c.rms_norm_eps, c.jnp_dtype)
    self.feature_norm = RMSNorm(d, c.rms_norm_eps, c.jnp_dtype)
    self.attn = Attention(c, rngs, input_dim=2 * d)
    self.mlp_norm = RMSNorm(d, c.rms_norm_eps, c.jnp_dtype)
    self.mlp = SwiGLU(c, rngs)
    self.final_norm = RMSNorm(d, c.rms_norm_eps, c.jnp_dtype)
    self.lm_head = linear(d, cfg.draft_vocab_size, False, c, rngs)
    self.cfg = cfg

  def fuse(self, features_BxTxFxD: jax.Array) -> jax.Array:
    b, t, f, d = features_BxTxFxD.shape
    return self.fc(features_BxTxFxD.reshape(b, t, f * d))

  def __call__(self, embedded_BxTxD, feature_BxTxD, positions_BxT, k_cache, v_cache):
    """Returns (hidden fed back at the next position, draft-vocabulary logits, caches)."""
    x_BxTx2D = jnp.concatenate([self.embed_norm(embedded_BxTxD), self.feature_norm(feature_BxTxD)],
                               axis=-1)
    attn_BxTxD, k_cache, v_cache = self.attn(x_BxTx2D, positions_BxT, k_cache, v_cache,
                                             inverse_frequencies(self.cfg.layer))
    hidden_BxTxD = feature_BxTxD + attn_BxTxD
    hidden_BxTxD = hidden_BxTxD + self.mlp(self.mlp_norm(hidden_BxTxD))
    logits = self.lm_head(self.final_norm(hidden_BxTxD)).astype(jnp.float32)
    return hidden_BxTxD, logits, k_cache, v_cache


@flax.struct.dataclass
class Eagle3Cache:
  k_BxHkvxHxS: jax.Array  # the layout of `layers.Attention`'s cache
  v_BxHkvxSxH: jax.Array

  @classmethod
  def create(cls, cfg: Eagle3Config, batch: int, max_len: int) -> "Eagle3Cache":
    c = cfg.layer
    return cls(jnp.zeros((batch, c.num_kv_heads, c.head_dim, max_len), c.jnp_dtype),
               jnp.zeros((batch, c.num_kv_heads, max_len, c.head_dim), c.jnp_dtype))


@functools.lru_cache(maxsize=None)
def _graph(cfg: Eagle3Config):
  return nnx.split(nnx.eval_shape(lambda: Eagle3(cfg, rngs=nnx.Rngs(0))))[0]


def bind(cfg: Eagle3Config, params: dict) -> Eagle3:
  return nnx.merge(_graph(cfg), params)


def init_params(cfg: Eagle3Config, seed: int = 0) -> dict:
  return random_params(Eagle3, cfg, seed)


def build_draft_vocab(token_counts_V: np.ndarray, draft_vocab_size: int) -> np.ndarray:
  """`d2t`: the target ids of the `draft_vocab_size` most frequent tokens, ascending.

  Ties are broken by the lower id so the map is deterministic; tokens never seen fill the rest.
  """
  order = np.lexsort((np.arange(len(token_counts_V)), -np.asarray(token_counts_V)))
  return np.sort(order[:draft_vocab_size]).astype(np.int32)


def draft_ids(d2t_Vd: jax.Array, vocab_size: int) -> jax.Array:
  """The inverse map, `t2d` [V]: each target id's draft id, or -1 where the draft vocabulary
  lacks it."""
  d2t_Vd = jnp.asarray(d2t_Vd)
  return jnp.full((vocab_size,), -1, jnp.int32).at[d2t_Vd].set(
      jnp.arange(d2t_Vd.shape[0], dtype=jnp.int32))


def step(cfg: Eagle3Config, params: dict, target_cfg: ModelConfig, target_params: dict,
         tokens_BxT: jax.Array, feature_BxTxD: jax.Array, positions_BxT: jax.Array,
         cache: Eagle3Cache) -> tuple[jax.Array, jax.Array, Eagle3Cache]:
  """One drafter pass: (hidden_BxTxD, draft logits_BxTxVd, cache). `tokens` are the t+1 tokens."""
  embedded = transformer.bind(target_cfg, target_params).embed(tokens_BxT)
  hidden, logits, k, v = bind(cfg, params)(embedded, feature_BxTxD, positions_BxT, cache.k_BxHkvxHxS,
                                           cache.v_BxHkvxSxH)
  return hidden, logits, Eagle3Cache(k, v)


def ttt_positions(length: int, step: int) -> dict[str, jax.Array]:
  """Index arithmetic of TTT step `step` for every index t < length (clamped at the end):
  the input token's index, the RoPE position, the index whose target logits are the teacher, and
  the index of the token being predicted (valid only where < length)."""
  t = jnp.arange(length)
  return {"input_token": jnp.minimum(t + 1 + step, length - 1), "position": t + step,
          "teacher": jnp.minimum(t + 1 + step, length - 1), "label": t + 2 + step}


def ttt_logits(cfg: Eagle3Config, params: dict, target_cfg: ModelConfig, target_params: dict,
               tokens_BxT: jax.Array, features_BxTxFxD: jax.Array, steps: int,
               input_tokens_UxBxT: jax.Array | None = None) -> jax.Array:
  """Training-time test: draft-vocabulary logits [U, B, T, Vd] of `steps` unrolled draft steps.

  Step s at index t is the drafter drafting s steps past t: its input feature is the target's
  fused feature at t (s = 0) or its own hidden state from step s-1 at t, its input token is the
  one at t+1+s, it sits at position t+s and predicts the token at t+2+s. It attends to the
  step-0 keys at positions <= t and to its own earlier steps' keys at index t -- exactly the
  context the inference chain has when it drafts from an anchor at t+1.

  `input_tokens_UxBxT` replaces the input tokens of each step (default: the sequence's own, as
  in SFT); Draft-OPD's replay feeds the drafter's own proposals there.
  """
  model = bind(cfg, params)
  embed = transformer.bind(target_cfg, target_params).embed
  c = cfg.layer
  b, t, _, _ = features_BxTxFxD.shape
  groups = c.num_heads // c.num_kv_heads
  rope = inverse_frequencies(c)
  index_T = jnp.arange(t)
  causal_TxT = index_T[None, :] <= index_T[:, None]
  feature_BxTxD = model.fuse(features_BxTxFxD)
  keys, values, all_logits = [], [], []
  for s in range(steps):
    where = ttt_positions(t, s)
    token_BxT = (jnp.take_along_axis(tokens_BxT, where["input_token"][None], 1)
                 if input_tokens_UxBxT is None else input_tokens_UxBxT[s])
    x = jnp.concatenate([model.embed_norm(embed(token_BxT)), model.feature_norm(feature_BxTxD)],
                        axis=-1)
    positions_BxT = jnp.broadcast_to(where["position"], (b, t))
    q = apply_rope(model.attn.q(x).reshape(b, t, c.num_heads, c.head_dim), positions_BxT, *rope)
    k = apply_rope(model.attn.k(x).reshape(b, t, c.num_kv_heads, c.head_dim), positions_BxT, *rope)
    v = model.attn.v(x).reshape(b, t, c.num_kv_heads, c.head_dim)
    keys.append(k)
    values.append(v)
    q = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim) * c.head_dim**-0.5
    base = jnp.einsum("btkgh,bskh->bkgts", q, keys[0], preferred_element_type=jnp.float32)
    own = [jnp.einsum("btkgh,btkh->bkgt", q, k_s, preferred_element_type=jnp.float32)[..., None]
           for k_s in keys[1:]]
    base_probs, *own_probs = attention_probs([base] + own, [causal_TxT] + [None] * len(own),
                                             v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", base_probs, values[0])
    for p_s, v_s in zip(own_probs, values[1:]):
      out = out + p_s[..., 0].transpose(0, 3, 1, 2)[..., None] * v_s[:, :, :, None, :]
    hidden_BxTxD = feature_BxTxD + model.attn.o(out.reshape(b, t, c.num_heads * c.head_dim))
    hidden_BxTxD = hidden_BxTxD + model.mlp(model.mlp_norm(hidden_BxTxD))
    all_logits.append(model.lm_head(model.final_norm(hidden_BxTxD)).astype(jnp.float32))
    feature_BxTxD = hidden_BxTxD
  return jnp.stack(all_logits)
