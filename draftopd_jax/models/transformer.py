"""The target decoder as a pure function of a parameter pytree.

`Transformer` is a Flax NNX module; everything outside this file uses it through `forward(cfg,
params, ...)`, where `params` is a plain nested dict of arrays (`nnx.to_pure_dict` of the module
state). Layers are stacked on a leading axis and run with `jax.lax.scan`, so compile time does not
grow with depth. One forward serves prefill, cached decoding and multi-token verification.
"""

import functools

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.layers import DecoderLayer, RMSNorm
from draftopd_jax.models.rope import inverse_frequencies

Params = dict


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer; slot `p` of a sequence holds the token at position `p`."""

  k_LxBxSxKxH: jax.Array
  v_LxBxSxKxH: jax.Array

  @classmethod
  def create(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, cfg.jnp_dtype), jnp.zeros(shape, cfg.jnp_dtype))

  @property
  def max_len(self) -> int:
    return self.k_LxBxSxKxH.shape[2]


@flax.struct.dataclass
class ForwardOutput:
  logits_BxTxV: jax.Array
  cache: KVCache
  # Outputs of the requested decoder layers (id i = Hugging Face `hidden_states[i + 1]`).
  hidden_BxTxFxD: jax.Array


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
                           param_dtype=cfg.jnp_dtype, rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def stacked_layers(rngs: nnx.Rngs) -> DecoderLayer:
      return DecoderLayer(cfg, rngs)

    self.layers = stacked_layers(rngs)
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False,
                                dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_dtype, rngs=rngs)
    self.cfg = cfg

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: KVCache,
               layer_ids: tuple[int, ...] = ()) -> ForwardOutput:
    cfg = self.cfg
    x_BxTxD = self.embed(tokens_BxT)
    rope = inverse_frequencies(cfg)
    layer_graph, layer_state = nnx.split(self.layers)
    ids_F = jnp.asarray(layer_ids, jnp.int32)
    hidden_FxBxTxD = jnp.zeros((len(layer_ids),) + x_BxTxD.shape, x_BxTxD.dtype)

    def one_layer(carry, per_layer):
      x_BxTxD, hidden_FxBxTxD = carry
      state, k_cache, v_cache, index = per_layer
      x_BxTxD, k_cache, v_cache = nnx.merge(layer_graph, state)(x_BxTxD, positions_BxT, k_cache,
                                                                 v_cache, rope)
      keep_F = ids_F == index
      hidden_FxBxTxD = jnp.where(keep_F[:, None, None, None], x_BxTxD[None], hidden_FxBxTxD)
      return (x_BxTxD, hidden_FxBxTxD), (k_cache, v_cache)

    (x_BxTxD, hidden_FxBxTxD), (k_cache, v_cache) = jax.lax.scan(
        one_layer, (x_BxTxD, hidden_FxBxTxD),
        (layer_state, cache.k_LxBxSxKxH, cache.v_LxBxSxKxH, jnp.arange(cfg.num_layers)))

    return ForwardOutput(logits_BxTxV=self.logits(x_BxTxD), cache=KVCache(k_cache, v_cache),
                         hidden_BxTxFxD=jnp.moveaxis(hidden_FxBxTxD, 0, 2))

  def logits(self, x_BxTxD: jax.Array) -> jax.Array:
    """Final norm and LM head (fp32 logits); the DFlash drafter reuses them as they are."""
    x_BxTxD = self.final_norm(x_BxTxD)
    if self.cfg.tie_embeddings:
      return self.embed.attend(x_BxTxD).astype(jnp.float32)
    return self.lm_head(x_BxTxD).astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def _abstract_state(cfg: ModelConfig):
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def bind(cfg: ModelConfig, params: Params) -> Transformer:
  """The module view of `params` (inside jitted code), for its embedding and LM head."""
  return nnx.merge(_abstract_state(cfg)[0], params)


def init_params(cfg: ModelConfig, seed: int = 0) -> Params:
  """Random parameters (for unit tests and tiny models); real weights come from `io/`."""
  return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed))))


def param_shapes(cfg: ModelConfig) -> Params:
  """The parameter tree with `jax.ShapeDtypeStruct` leaves, without allocating anything."""
  return nnx.to_pure_dict(_abstract_state(cfg)[1])


def forward(cfg: ModelConfig, params: Params, tokens_BxT: jax.Array, positions_BxT: jax.Array,
            cache: KVCache, layer_ids: tuple[int, ...] = ()) -> ForwardOutput:
  """Runs the decoder on `tokens_BxT` at `positions_BxT`, writing their K/V into `cache`.

  Prefill, one-token decoding and K-token verification are the same call with T = prompt length,
  1 and K. Each query attends to the cache slots at or before its own position.
  """
  for i in layer_ids:
    if not 0 <= i < cfg.num_layers:
      raise ValueError(f"layer id {i} out of range for a {cfg.num_layers}-layer model")
  return bind(cfg, params)(tokens_BxT, positions_BxT, cache, tuple(layer_ids))
