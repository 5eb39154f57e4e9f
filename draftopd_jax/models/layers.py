"""Building blocks shared by the target decoder and the drafters (Flax NNX modules)."""

import jax
import jax.numpy as jnp
from flax import nnx

from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.rope import apply_rope


class RMSNorm(nnx.Module):
  """RMSNorm computed in fp32 and cast back before the learned scale, as Hugging Face does."""

  def __init__(self, dim: int, eps: float, dtype: jnp.dtype):
    self.scale = nnx.Param(jnp.ones((dim,), dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...] * normed.astype(x.dtype)


def linear(d_in: int, d_out: int, bias: bool, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=bias, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_dtype,
                    rngs=rngs)


class Attention(nnx.Module):
  """Grouped-query attention over an explicit per-layer KV cache.

  Cache slot `p` holds the key/value of the token at position `p`, so writing is a scatter at the
  tokens' positions and a query at position `p` sees slots `0..p`. Rolling a sequence back is free:
  later writes overwrite the stale slots before any query can see them.

  The cache is laid out [B, Kv, S, H] (KV-head-major): each (sequence, KV head) owns one
  contiguous S x H matrix, and the T queries of its G grouped heads form one Q = T*G row block,
  so scores and outputs are plain batched matmuls that read the cache once, without transposing
  it (on CPU the [B, S, Kv, H] layout made decoding attention several times slower).
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, input_dim: int | None = None):
    d, h = cfg.hidden_size, cfg.head_dim
    d_in = input_dim or d  # EAGLE-3 attends from [embedding; feature], twice the hidden size
    self.q = linear(d_in, cfg.num_heads * h, cfg.qkv_bias, cfg, rngs)
    self.k = linear(d_in, cfg.num_kv_heads * h, cfg.qkv_bias, cfg, rngs)
    self.v = linear(d_in, cfg.num_kv_heads * h, cfg.qkv_bias, cfg, rngs)
    self.o = linear(cfg.num_heads * h, d, cfg.o_bias, cfg, rngs)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, cfg.rms_norm_eps, cfg.jnp_dtype)
      self.k_norm = RMSNorm(h, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, k_cache_BxKxSxH: jax.Array,
               v_cache_BxKxSxH: jax.Array, rope: tuple) -> tuple[jax.Array, jax.Array, jax.Array]:
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    kv, h = cfg.num_kv_heads, cfg.head_dim
    groups = cfg.num_heads // kv
    q_BxTxNxH = self.q(x_BxTxD).reshape(b, t, cfg.num_heads, h)
    k_BxTxKxH = self.k(x_BxTxD).reshape(b, t, kv, h)
    v_BxTxKxH = self.v(x_BxTxD).reshape(b, t, kv, h)
    if cfg.qk_norm:
      q_BxTxNxH, k_BxTxKxH = self.q_norm(q_BxTxNxH), self.k_norm(k_BxTxKxH)
    q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, *rope)
    k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, *rope)

    # Positions past the cache end (finished sequences running on) are dropped, not wrapped.
    slot_index = (jnp.arange(b)[:, None, None], jnp.arange(kv)[None, :, None],
                  positions_BxT[:, None, :])
    k_cache_BxKxSxH = k_cache_BxKxSxH.at[slot_index].set(jnp.swapaxes(k_BxTxKxH, 1, 2),
                                                          mode="drop")
    v_cache_BxKxSxH = v_cache_BxKxSxH.at[slot_index].set(jnp.swapaxes(v_BxTxKxH, 1, 2),
                                                          mode="drop")

    # Query rows q = t * G + g: token t, grouped head g of its KV head.
    q_BxKxQxH = q_BxTxNxH.reshape(b, t, kv, groups, h).transpose(0, 2, 1, 3, 4).reshape(
        b, kv, t * groups, h)
    scores_BxKxQxS = jnp.einsum("bkqh,bksh->bkqs", q_BxKxQxH, k_cache_BxKxSxH,
                                preferred_element_type=jnp.float32) * h**-0.5
    slots_S = jnp.arange(k_cache_BxKxSxH.shape[2])
    visible_BxQxS = jnp.repeat(slots_S[None, None, :] <= positions_BxT[:, :, None], groups, axis=1)
    scores_BxKxQxS = jnp.where(visible_BxQxS[:, None], scores_BxKxQxS, -jnp.inf)
    probs_BxKxQxS = jax.nn.softmax(scores_BxKxQxS, axis=-1).astype(v_cache_BxKxSxH.dtype)
    out_BxKxQxH = jnp.einsum("bkqs,bksh->bkqh", probs_BxKxQxS, v_cache_BxKxSxH)
    out_BxTxNH = out_BxKxQxH.reshape(b, kv, t, groups, h).transpose(0, 2, 1, 3, 4).reshape(
        b, t, cfg.num_heads * h)
    return self.o(out_BxTxNH), k_cache_BxKxSxH, v_cache_BxKxSxH


class SwiGLU(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.gate = linear(cfg.hidden_size, cfg.intermediate_size, False, cfg, rngs)
    self.up = linear(cfg.hidden_size, cfg.intermediate_size, False, cfg, rngs)
    self.down = linear(cfg.intermediate_size, cfg.hidden_size, False, cfg, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nnx.Module):
  """Pre-norm attention + SwiGLU block with residual connections."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.mlp = SwiGLU(cfg, rngs)

  def __call__(self, x_BxTxD, positions_BxT, k_cache, v_cache, rope):
    attn_BxTxD, k_cache, v_cache = self.attn(self.attn_norm(x_BxTxD), positions_BxT, k_cache,
                                             v_cache, rope)
    x_BxTxD = x_BxTxD + attn_BxTxD
    return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), k_cache, v_cache
