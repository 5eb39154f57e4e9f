"""Fused verify-and-accept as a Pallas kernel (the contract is `decoding.verify.verify_reference`).

The target's verify logits [B, K, V] are read once, in vocabulary tiles. Per verify row the kernel
keeps running statistics -- max and sum of exp (log-sum-exp), argmax, the logit of the proposal
the row checks, and for sampling the best Gumbel-perturbed tempered logit excluding that
proposal -- so no [B, K, V] softmax is ever written. After the last tile it finds the accepted
prefix and the target's next token. Top-k / top-p need a sort over the whole row, so those
settings stay on the reference (`supports`).

Two launch layouts share `_accumulate_tile` and `_decide`:
* TPU (Mosaic): grid (B, tiles), the tile axis sequential, statistics carried in the resident
  output block;
* GPU (Triton): grid (B,), a loop over tiles inside the kernel (Triton programs run in parallel,
  so a grid axis cannot carry state), with power-of-two block shapes.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from draftopd_jax.sampling import noise

# Columns of the per-row statistics block [K, NUM_STATS].
MAX, SUM_EXP, ARGMAX, CHECKED_LOGIT, MAX_T, SUM_EXP_T, BEST_PERTURBED, SAMPLED = range(8)
NUM_STATS = 8
_BIG = jnp.iinfo(jnp.int32).max


def supports(sampling) -> bool:
  return sampling.greedy or (sampling.top_k == 0 and sampling.top_p == 1.0)


def _first_max(values_KxT, cols_1xT):
  """(max, lowest column reaching it) per row, as (K, 1) arrays."""
  best_Kx1 = jnp.max(values_KxT, axis=1, keepdims=True)
  index_Kx1 = jnp.min(jnp.where(values_KxT == best_Kx1, cols_1xT, _BIG), axis=1, keepdims=True)
  return best_Kx1, index_Kx1


def _online_logsumexp(running_max, running_sum, values_KxT):
  tile_max = jnp.max(values_KxT, axis=1, keepdims=True)
  new_max = jnp.maximum(running_max, tile_max)
  new_sum = (running_sum * jnp.exp(running_max - new_max)
             + jnp.sum(jnp.exp(values_KxT - new_max), axis=1, keepdims=True))
  return new_max, new_sum


def _accumulate_tile(stats, logits_KxT, cols_1xT, checked_Kx1, rows_Kx1, seed, vocab_size,
                     temperature):
  """Folds one vocabulary tile into the per-row statistics (a tuple of (K, 1) arrays)."""
  stats = list(stats)
  valid_1xT = cols_1xT < vocab_size
  x_KxT = jnp.where(valid_1xT, logits_KxT.astype(jnp.float32), -jnp.inf)
  tile_max, tile_arg = _first_max(x_KxT, cols_1xT)
  # Strictly greater: on ties the earlier tile (lower index) wins, as jnp.argmax does.
  stats[ARGMAX] = jnp.where(tile_max > stats[MAX], tile_arg.astype(jnp.float32), stats[ARGMAX])
  stats[MAX], stats[SUM_EXP] = _online_logsumexp(stats[MAX], stats[SUM_EXP], x_KxT)
  is_checked_KxT = cols_1xT == checked_Kx1
  stats[CHECKED_LOGIT] += jnp.sum(jnp.where(is_checked_KxT, x_KxT, 0.0), axis=1, keepdims=True)
  if temperature > 0:
    scaled_KxT = x_KxT / temperature
    stats[MAX_T], stats[SUM_EXP_T] = _online_logsumexp(stats[MAX_T], stats[SUM_EXP_T], scaled_KxT)
    perturbed_KxT = jnp.where(is_checked_KxT | ~valid_1xT, -jnp.inf,
                              scaled_KxT + noise.gumbel(seed, rows_Kx1, cols_1xT))
    best, best_arg = _first_max(perturbed_KxT, cols_1xT)
    stats[SAMPLED] = jnp.where(best > stats[BEST_PERTURBED], best_arg.astype(jnp.float32),
                               stats[SAMPLED])
    stats[BEST_PERTURBED] = jnp.maximum(stats[BEST_PERTURBED], best)
  return tuple(stats)


def _initial_stats(k: int):
  minus_inf, zero = jnp.full((k, 1), -jnp.inf, jnp.float32), jnp.zeros((k, 1), jnp.float32)
  return (minus_inf, zero, zero, zero, minus_inf, zero, minus_inf, zero)


def _decide(stats, checked_Kx1, rows_Kx1, seed, vocab_size, temperature, num_slots):
  """Accepted prefix length, the next token (both (1, 1)) and proposal log-probs (K, 1).

  Rows at or past `num_slots` are padding (GPU layout) and never read.
  """
  k = num_slots
  slot_Kx1 = lax.broadcasted_iota(jnp.int32, checked_Kx1.shape, 0)
  has_proposal_Kx1 = slot_Kx1 < k - 1
  if temperature > 0:
    log_p_checked = (stats[CHECKED_LOGIT] / temperature - stats[MAX_T]
                     - jnp.log(stats[SUM_EXP_T]))
    keep_Kx1 = noise.acceptance_uniform(seed, rows_Kx1, vocab_size) < jnp.exp(log_p_checked)
    choice_Kx1 = stats[SAMPLED]
  else:
    keep_Kx1 = checked_Kx1.astype(jnp.float32) == stats[ARGMAX]
    choice_Kx1 = stats[ARGMAX]
  accepted_1x1 = jnp.min(jnp.where(has_proposal_Kx1 & ~keep_Kx1, slot_Kx1, k - 1), axis=0,
                         keepdims=True)
  next_1x1 = jnp.sum(jnp.where(slot_Kx1 == accepted_1x1, choice_Kx1, 0.0), axis=0, keepdims=True)
  logprob_Kx1 = stats[CHECKED_LOGIT] - stats[MAX] - jnp.log(stats[SUM_EXP])
  return accepted_1x1, next_1x1.astype(jnp.int32), logprob_Kx1


def _tpu_kernel(seed_ref, checked_ref, logits_ref, stats_ref, accepted_ref, next_ref, logprob_ref,
                *, vocab_size, tile, temperature):
  b, t = pl.program_id(0), pl.program_id(1)
  k = checked_ref.shape[1]
  checked_Kx1 = checked_ref[0]
  rows_Kx1 = b * k + lax.broadcasted_iota(jnp.int32, (k, 1), 0)
  seed = seed_ref[0, 0]

  @pl.when(t == 0)
  def _():
    for j, value in enumerate(_initial_stats(k)):
      stats_ref[0, :, j:j + 1] = value

  stats = tuple(stats_ref[0, :, j:j + 1] for j in range(NUM_STATS))
  cols_1xT = t * tile + lax.broadcasted_iota(jnp.int32, (1, tile), 1)
  stats = _accumulate_tile(stats, logits_ref[0], cols_1xT, checked_Kx1, rows_Kx1, seed,
                           vocab_size, temperature)
  for j, value in enumerate(stats):
    stats_ref[0, :, j:j + 1] = value

  @pl.when(t == pl.num_programs(1) - 1)
  def _():
    accepted, next_token, logprob = _decide(stats, checked_Kx1, rows_Kx1, seed, vocab_size,
                                            temperature, num_slots=k)
    accepted_ref[0] = accepted
    next_ref[0] = next_token
    logprob_ref[0] = logprob


def _gpu_kernel(seed_ref, checked_ref, logits_ref, accepted_ref, next_ref, logprob_ref, *,
                vocab_size, tile, temperature, k):
  b = pl.program_id(0)
  k_pad = checked_ref.shape[1]
  checked_Kx1 = checked_ref[0]
  rows_Kx1 = b * k + lax.broadcasted_iota(jnp.int32, (k_pad, 1), 0)
  real_row_Kx1 = lax.broadcasted_iota(jnp.int32, (k_pad, 1), 0) < k
  seed = seed_ref[0, 0]

  def one_tile(t, stats):
    cols_1xT = t * tile + lax.broadcasted_iota(jnp.int32, (1, tile), 1)
    # Masked loads read the ragged last tile and the padding rows without copying the logits.
    logits_KxT = pltriton.load(logits_ref.at[b, pl.ds(0, k_pad), pl.ds(t * tile, tile)],
                            mask=real_row_Kx1 & (cols_1xT < vocab_size), other=-jnp.inf)
    return _accumulate_tile(stats, logits_KxT, cols_1xT, checked_Kx1, rows_Kx1, seed, vocab_size,
                            temperature)

  stats = lax.fori_loop(0, pl.cdiv(vocab_size, tile), one_tile, _initial_stats(k_pad))
  accepted, next_token, logprob = _decide(stats, checked_Kx1, rows_Kx1, seed, vocab_size,
                                          temperature, num_slots=k)
  accepted_ref[0] = accepted
  next_ref[0] = next_token
  logprob_ref[0] = logprob


@functools.partial(jax.jit, static_argnames=("temperature", "tile", "layout", "interpret"))
def verify_accept(logits_BxKxV: jax.Array, proposals_BxK1: jax.Array, seed: jax.Array, *,
                  temperature: float = 0.0, tile: int = 2048, layout: str = "auto",
                  interpret: bool = False):
  """Returns (accepted_B, next_token_B, proposal_logprob_BxK1); see `verify_reference`.

  `layout` is "tpu", "gpu" or "auto" (the default backend's); `interpret=True` runs either one
  on the CPU.
  """
  b, k, v = logits_BxKxV.shape
  if layout == "auto":
    layout = "gpu" if jax.default_backend() == "gpu" else "tpu"
  checked_BxK = jnp.concatenate([proposals_BxK1.astype(jnp.int32),
                                 jnp.full((b, 1), -1, jnp.int32)], axis=1)
  seed_1x1 = jnp.asarray(seed, jnp.int32).reshape(1, 1)
  statics = dict(vocab_size=v, temperature=float(temperature))
  if layout == "gpu":
    # Triton wants power-of-two blocks: K is padded with rows that check nothing; the logits
    # stay in place (masked loads).
    tile = min(tile, pl.next_power_of_2(v))
    k_pad = pl.next_power_of_2(k)
    checked_BxK = jnp.pad(checked_BxK, ((0, 0), (0, k_pad - k)), constant_values=-1)
    accepted, next_token, logprob = pl.pallas_call(
        functools.partial(_gpu_kernel, tile=tile, k=k, **statics),
        grid=(b,),
        in_specs=[pl.BlockSpec((1, 1), lambda i: (0, 0)),
                  pl.BlockSpec((1, k_pad, 1), lambda i: (i, 0, 0)),
                  pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=[pl.BlockSpec((1, 1, 1), lambda i: (i, 0, 0)),
                   pl.BlockSpec((1, 1, 1), lambda i: (i, 0, 0)),
                   pl.BlockSpec((1, k_pad, 1), lambda i: (i, 0, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, 1, 1), jnp.int32),
                   jax.ShapeDtypeStruct((b, 1, 1), jnp.int32),
                   jax.ShapeDtypeStruct((b, k_pad, 1), jnp.float32)],
        # Triton, not Mosaic GPU: its masked loads handle the ragged vocabulary edge directly.
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret)(seed_1x1, checked_BxK[..., None], logits_BxKxV)
  else:
    tile = min(tile, pl.cdiv(v, 128) * 128)
    kernel = functools.partial(_tpu_kernel, tile=tile, **statics)
    _, accepted, next_token, logprob = pl.pallas_call(
        kernel,
        grid=(b, pl.cdiv(v, tile)),
        in_specs=[pl.BlockSpec((1, 1), lambda i, t: (0, 0)),
                  pl.BlockSpec((1, k, 1), lambda i, t: (i, 0, 0)),
                  pl.BlockSpec((1, k, tile), lambda i, t: (i, 0, t))],
        out_specs=[pl.BlockSpec((1, k, NUM_STATS), lambda i, t: (i, 0, 0)),
                   pl.BlockSpec((1, 1, 1), lambda i, t: (i, 0, 0)),
                   pl.BlockSpec((1, 1, 1), lambda i, t: (i, 0, 0)),
                   pl.BlockSpec((1, k, 1), lambda i, t: (i, 0, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, k, NUM_STATS), jnp.float32),
                   jax.ShapeDtypeStruct((b, 1, 1), jnp.int32),
                   jax.ShapeDtypeStruct((b, 1, 1), jnp.int32),
                   jax.ShapeDtypeStruct((b, k, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret)(seed_1x1, checked_BxK[..., None], logits_BxKxV)
  return accepted[:, 0, 0], next_token[:, 0, 0], logprob[:, :k - 1, 0]

