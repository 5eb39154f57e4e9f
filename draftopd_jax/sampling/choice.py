"""Token choice from logits: greedy, or sampling with temperature, top-k and top-p."""

import dataclasses

import jax
import jax.numpy as jnp

from draftopd_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 means greedy; top_k 0 and top_p 1 disable those filters."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise UserError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0:
      raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise UserError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def filtered_logits(logits_BxV: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """Temperature-scaled logits with the tokens outside top-k / top-p set to -inf.

  The result defines the sampling distribution (softmax of it); speculative sampling needs this
  same distribution, so it is exposed apart from `sample`.
  """
  logits_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth_largest_Bx1 = jax.lax.top_k(logits_BxV, sampling.top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
  if sampling.top_p < 1:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass strictly
    # above it is still below top_p (so the most likely token always stays).
    kept_count_Bx1 = jnp.sum(mass_before_BxV < sampling.top_p, axis=-1, keepdims=True)
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, kept_count_Bx1 - 1, axis=-1)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def sample(logits_BxV: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """One token per row: argmax when greedy, else a draw from the filtered distribution."""
  if sampling.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filtered_logits(logits_BxV, sampling)).astype(jnp.int32)
