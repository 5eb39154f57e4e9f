"""Counter-based random numbers: a pure function of (seed, row, column).

Speculative sampling needs a Gumbel variate per (verify row, vocabulary entry). `jax.random`
would need the whole [B, K, V] array at once; a hash of the coordinates can be evaluated for any
tile on its own, so the Pallas kernel and the `jnp` reference produce identical draws. Only int32
arithmetic (wrapping multiply, xor, logical shifts) is used, which every Pallas backend lowers.
"""

import jax
import jax.numpy as jnp
from jax import lax


def _mix(x: jax.Array) -> jax.Array:
  """A 32-bit avalanche hash (the "lowbias32" constants of C. Wellons), on int32."""
  x = x ^ lax.shift_right_logical(x, jnp.int32(16))
  x = x * jnp.int32(0x7FEB352D)
  x = x ^ lax.shift_right_logical(x, jnp.int32(15))
  x = x * jnp.int32(-0x7B935975)  # 0x846CA68B as a signed 32-bit constant
  return x ^ lax.shift_right_logical(x, jnp.int32(16))


def uniform(seed: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
  """A float32 in (0, 1) for each (row, col) pair (broadcasting), fixed by `seed`."""
  row_key = _mix(jnp.asarray(seed, jnp.int32) ^ _mix(jnp.asarray(row, jnp.int32) + 0x3C6EF372))
  bits = _mix(row_key ^ (jnp.asarray(col, jnp.int32) * jnp.int32(-0x61C88647)))  # 0x9E3779B9
  top24 = lax.shift_right_logical(bits, jnp.int32(8))
  return (top24.astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel(seed: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
  return -jnp.log(-jnp.log(uniform(seed, row, col)))


def acceptance_uniform(seed: jax.Array, row: jax.Array, vocab_size: int) -> jax.Array:
  """The uniform that decides acceptance at a verify row: column `vocab_size` is never a token,
  so it is independent of the row's Gumbel noise."""
  return uniform(seed, row, jnp.int32(vocab_size))
