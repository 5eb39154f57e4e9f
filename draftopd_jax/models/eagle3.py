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
from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.layers import Attention, RMSNorm, SwiGLU, linear
from draftopd_jax.models.rope import inverse_frequencies


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
    layer = target.replace(num_layers=1, qkv_bias=False, o_bias=False, qk_norm=False)
    return cls(block_size=block_size,
               target_layer_ids=tuple(target_layer_ids or default_layer_ids(target.num_layers)),
               draft_vocab_size=draft_vocab_size, layer=layer)

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
  k_BxSxKxH: jax.Array
  v_BxSxKxH: jax.Array

  @classmethod
  def create(cls, cfg: Eagle3Config, batch: int, max_len: int) -> "Eagle3Cache":
    c = cfg.layer
    shape = (batch, max_len, c.num_kv_heads, c.head_dim)
    return cls(jnp.zeros(shape, c.jnp_dtype), jnp.zeros(shape, c.jnp_dtype))


@functools.lru_cache(maxsize=None)
def _graph(cfg: Eagle3Config):
  return nnx.split(nnx.eval_shape(lambda: Eagle3(cfg, rngs=nnx.Rngs(0))))[0]


def bind(cfg: Eagle3Config, params: dict) -> Eagle3:
  return nnx.merge(_graph(cfg), params)


def init_params(cfg: Eagle3Config, seed: int = 0) -> dict:
  return nnx.to_pure_dict(nnx.state(Eagle3(cfg, rngs=nnx.Rngs(seed))))


def build_draft_vocab(token_counts_V: np.ndarray, draft_vocab_size: int) -> np.ndarray:
  """`d2t`: the target ids of the `draft_vocab_size` most frequent tokens, ascending.

  Ties are broken by the lower id so the map is deterministic; tokens never seen fill the rest.
  """
  order = np.lexsort((np.arange(len(token_counts_V)), -np.asarray(token_counts_V)))
  return np.sort(order[:draft_vocab_size]).astype(np.int32)


def target_to_draft_mask(d2t: np.ndarray, vocab_size: int) -> np.ndarray:
  """`t2d`: True for target ids that the draft vocabulary contains."""
  mask = np.zeros(vocab_size, bool)
  mask[d2t] = True
  return mask


def step(cfg: Eagle3Config, params: dict, target_cfg: ModelConfig, target_params: dict,
         tokens_BxT: jax.Array, feature_BxTxD: jax.Array, positions_BxT: jax.Array,
         cache: Eagle3Cache) -> tuple[jax.Array, jax.Array, Eagle3Cache]:
  """One drafter pass: (hidden_BxTxD, draft logits_BxTxVd, cache). `tokens` are the t+1 tokens."""
  embedded = transformer.bind(target_cfg, target_params).embed(tokens_BxT)
  hidden, logits, k, v = bind(cfg, params)(embedded, feature_BxTxD, positions_BxT, cache.k_BxSxKxH,
                                           cache.v_BxSxKxH)
  return hidden, logits, Eagle3Cache(k, v)
