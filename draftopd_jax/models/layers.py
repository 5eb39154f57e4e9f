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

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, k_cache_BxSxKxH: jax.Array,
               v_cache_BxSxKxH: jax.Array, rope: tuple) -> tuple[jax.Array, jax.Array, jax.Array]:
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    q_BxTxNxH = self.q(x_BxTxD).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k_BxTxKxH = self.k(x_BxTxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v_BxTxKxH = self.v(x_BxTxD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
      q_BxTxNxH, k_BxTxKxH = self.q_norm(q_BxTxNxH), self.k_norm(k_BxTxKxH)
    q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, *rope)
    k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, *rope)

    # Positions past the cache end (finished sequences running on) are dropped, not wrapped.
    batch_Bx1 = jnp.arange(b)[:, None]
    k_cache_BxSxKxH = k_cache_BxSxKxH.at[batch_Bx1, positions_BxT].set(k_BxTxKxH, mode="drop")
    v_cache_BxSxKxH = v_cache_BxSxKxH.at[batch_Bx1, positions_BxT].set(v_BxTxKxH, mode="drop")

    groups = cfg.num_heads // cfg.num_kv_heads
    q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)
    scores_BxKxGxTxS = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_cache_BxSxKxH,
                                  preferred_element_type=jnp.float32) * cfg.head_dim**-0.5
    slots_S = jnp.arange(k_cache_BxSxKxH.shape[1])
    visible_BxTxS = slots_S[None, None, :] <= positions_BxT[:, :, None]
    scores_BxKxGxTxS = jnp.where(visible_BxTxS[:, None, None], scores_BxKxGxTxS, -jnp.inf)
    probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(v_cache_BxSxKxH.dtype)
    out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS, v_cache_BxSxKxH)
    out_BxTxD = self.o(out_BxTxKxGxH.reshape(b, t, cfg.num_heads * cfg.head_dim))
    return out_BxTxD, k_cache_BxSxKxH, v_cache_BxSxKxH


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
