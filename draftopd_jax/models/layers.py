"""Building blocks shared by the target decoder and the drafters (Flax NNX modules)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.moe import MoE
from draftopd_jax.models.rope import apply_rope


@functools.partial(jax.jit, static_argnums=(0, 1))
def random_params(module: type[nnx.Module], cfg, seed: jax.Array | int) -> dict:
  """Fresh parameters of `module(cfg, rngs=...)` as a pure dict, from one compiled program: built
  eagerly, every initializer op compiles on its own (a tiny model's init took 2.3 s, not 1.1)."""
  return nnx.to_pure_dict(nnx.state(module(cfg, rngs=nnx.Rngs(jax.random.key(seed)))))


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


def attention_probs(scores: list[jax.Array], visible: list[jax.Array | None], dtype
                    ) -> list[jax.Array]:
  """One softmax over the keys of several segments (the last axis of each float32 score array),
  each masked where its `visible` is False (None: all visible); the probabilities per segment, in
  `dtype`. The target attends to one segment, its KV cache; DFlash blocks to the context and the
  block; EAGLE-3's training-time test to the sequence and each earlier step's own key. Their
  score and value contractions stay in the layout each one's cache is kept in."""
  masked = [s if v is None else jnp.where(v, s, -jnp.inf) for s, v in zip(scores, visible)]
  probs = jax.nn.softmax(jnp.concatenate(masked, axis=-1), axis=-1).astype(dtype)
  bounds = np.cumsum([s.shape[-1] for s in scores])[:-1]
  return jnp.split(probs, bounds, axis=-1)


# When `cache_scores` multiplies and adds instead of calling a dot (CPU only): at most this many
# query rows per KV head (one decoding step), for at least this many (sequence, KV head) matrices.
FUSED_SCORE_ROWS = 8
FUSED_SCORE_MATRICES = 96


def cache_scores(q_BxHkvxRxH: jax.Array, k_BxHkvxHxS: jax.Array) -> jax.Array:
  """Float32 scores of R query rows against every cache slot of their KV head.

  XLA on CPU makes the einsum one small [R, H] x [H, S] product per (sequence, KV head), which
  ran 4-5x below this machine's memory bandwidth in batched decoding. There, an unrolled
  multiply-add over the head dimension fuses into one pass over the keys: 1.1-2.6 ms against
  2.1-4.1 ms per layer at batch 64 x 3 KV heads x 3 rows and 449 to 768 slots, 2.7-4.3 against
  7.0-7.8 ms at batch 128; level at batch 16 and 32. It loses at batch 1 (its one loop is not
  split over cores), from about 24 rows, and at slot counts that are multiples of 256 (its H key
  rows, S floats apart, then fall into the same cache sets: 6.9 vs 4.5 ms at 1,024 slots), where
  the einsum stays.
  """
  b, kv, r, h = q_BxHkvxRxH.shape
  s = k_BxHkvxHxS.shape[-1]
  if (jax.default_backend() != "cpu" or r > FUSED_SCORE_ROWS or b * kv < FUSED_SCORE_MATRICES
      or s % 256 == 0):
    return jnp.einsum("bkqh,bkhs->bkqs", q_BxHkvxRxH, k_BxHkvxHxS,
                      preferred_element_type=jnp.float32)
  q_BxHkvxRxH, k_BxHkvxHxS = q_BxHkvxRxH.astype(jnp.float32), k_BxHkvxHxS.astype(jnp.float32)
  scores_BxHkvxRxS = q_BxHkvxRxH[..., 0, None] * k_BxHkvxHxS[:, :, None, 0]
  for i in range(1, h):
    scores_BxHkvxRxS += q_BxHkvxRxH[..., i, None] * k_BxHkvxHxS[:, :, None, i]
  return scores_BxHkvxRxS


class Attention(nnx.Module):
  """Grouped-query attention over an explicit per-layer KV cache.

  Cache slot `p` holds the key/value of the token at position `p`, so writing is a scatter at the
  tokens' positions and a query at position `p` sees slots `0..p`. Rolling a sequence back is free:
  later writes overwrite the stale slots before any query can see them.

  The cache is KV-head-major: each (sequence, KV head) owns one contiguous matrix, keys as H x S
  and values as S x H, and the T queries of its G grouped heads form one Q = T*G row block, so
  scores (Q x H times H x S) and outputs (Q x S times S x H) are plain batched matmuls that read
  the cache once, without transposing it. On CPU a [B, S, Kv, H] cache made decoding attention
  several times slower, and keys as S x H (contracted on their minor axis) took about 40% longer
  than H x S (batch 64, 449 slots).
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

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, k_cache_BxHkvxHxS: jax.Array,
               v_cache_BxHkvxSxH: jax.Array, rope: tuple) -> tuple[jax.Array, jax.Array, jax.Array]:
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    kv, h = cfg.num_kv_heads, cfg.head_dim
    groups = cfg.num_heads // kv
    q_BxTxHqxH = self.q(x_BxTxD).reshape(b, t, cfg.num_heads, h)
    k_BxTxHkvxH = self.k(x_BxTxD).reshape(b, t, kv, h)
    v_BxTxHkvxH = self.v(x_BxTxD).reshape(b, t, kv, h)
    if cfg.qk_norm:
      q_BxTxHqxH, k_BxTxHkvxH = self.q_norm(q_BxTxHqxH), self.k_norm(k_BxTxHkvxH)
    q_BxTxHqxH = apply_rope(q_BxTxHqxH, positions_BxT, *rope)
    k_BxTxHkvxH = apply_rope(k_BxTxHkvxH, positions_BxT, *rope)

    # Positions past the cache end (finished sequences running on) are dropped, not wrapped.
    # Both writes take [B, Kv, T, H] values (a slice between the index arrays puts it last).
    rows, heads = jnp.arange(b)[:, None, None], jnp.arange(kv)[None, :, None]
    slots_BxHkvxT = positions_BxT[:, None, :]
    k_cache_BxHkvxHxS = k_cache_BxHkvxHxS.at[rows, heads, :, slots_BxHkvxT].set(
        jnp.swapaxes(k_BxTxHkvxH, 1, 2), mode="drop")
    v_cache_BxHkvxSxH = v_cache_BxHkvxSxH.at[rows, heads, slots_BxHkvxT].set(
        jnp.swapaxes(v_BxTxHkvxH, 1, 2), mode="drop")

    # Query rows q = t * G + g: token t, grouped head g of its KV head.
    q_BxHkvxRxH = q_BxTxHqxH.reshape(b, t, kv, groups, h).transpose(0, 2, 1, 3, 4).reshape(
        b, kv, t * groups, h)
    scores_BxHkvxRxS = cache_scores(q_BxHkvxRxH, k_cache_BxHkvxHxS) * h**-0.5
    slots_S = jnp.arange(k_cache_BxHkvxHxS.shape[3])
    visible_BxRxS = jnp.repeat(slots_S[None, None, :] <= positions_BxT[:, :, None], groups, axis=1)
    probs_BxHkvxRxS, = attention_probs([scores_BxHkvxRxS], [visible_BxRxS[:, None]],
                                       v_cache_BxHkvxSxH.dtype)
    out_BxHkvxRxH = jnp.einsum("bkqs,bksh->bkqh", probs_BxHkvxRxS, v_cache_BxHkvxSxH)
    out_BxTxE = out_BxHkvxRxH.reshape(b, kv, t, groups, h).transpose(0, 2, 1, 3, 4).reshape(
        b, t, cfg.num_heads * h)
    return self.o(out_BxTxE), k_cache_BxHkvxHxS, v_cache_BxHkvxSxH


class SwiGLU(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.gate = linear(cfg.hidden_size, cfg.intermediate_size, False, cfg, rngs)
    self.up = linear(cfg.hidden_size, cfg.intermediate_size, False, cfg, rngs)
    self.down = linear(cfg.intermediate_size, cfg.hidden_size, False, cfg, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nnx.Module):
  """Pre-norm attention + SwiGLU (or mixture-of-experts) block with residual connections."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, sparse: bool = False):
    self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype)
    self.mlp = MoE(cfg, rngs) if sparse else SwiGLU(cfg, rngs)

  def __call__(self, x_BxTxD, positions_BxT, k_cache, v_cache, rope):
    attn_BxTxD, k_cache, v_cache = self.attn(self.attn_norm(x_BxTxD), positions_BxT, k_cache,
                                             v_cache, rope)
    x_BxTxD = x_BxTxD + attn_BxTxD
    return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), k_cache, v_cache
