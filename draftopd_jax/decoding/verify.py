"""Verify-and-accept: which drafted tokens the target keeps, and the token it adds.

Slot 0 of a block is the anchor (the last committed token); the drafter proposed slots 1..K-1.
The target's verify pass gives `logits_BxKxV[:, k]`, its distribution for the token after slot k,
so proposal k is checked against row k-1 and the target's own token comes from row `accepted`.

Greedy: accept the longest prefix equal to the target's argmax. Sampling: the drafter's proposals
are deterministic (a one-hot draft distribution), so proposal d is kept with probability p(d) and,
at the first rejection, the token is drawn from p with d removed (renormalized) -- exact
speculative sampling, so the output distribution is the target's. Draws use Gumbel-max with
counter-based noise (`noise.py`), which the Pallas kernel can regenerate tile by tile.

This module is the `jnp` reference; `pallas_kernels.verify_accept` implements the same contract
without materializing the softmax. `verify` dispatches between them.
"""

import flax
import jax
import jax.numpy as jnp

from draftopd_jax.sampling import SamplingConfig, filtered_logits, noise
from pallas_kernels import verify_accept


@flax.struct.dataclass
class Verdict:
  accepted_B: jax.Array  # int32 in [0, K-1]: proposals kept
  next_token_B: jax.Array  # int32: the target's token at slot `accepted` (correction or bonus)
  # Target log-prob (temperature 1, no filtering) of each proposal under the prefix the drafter
  # used: what Draft-OPD's reverse-KL stream needs as the teacher.
  proposal_logprob_BxK1: jax.Array


def checked_tokens(proposals_BxK1: jax.Array) -> jax.Array:
  """Per verify row, the proposal it checks (row k checks slot k+1); -1 for the last row."""
  b = proposals_BxK1.shape[0]
  return jnp.concatenate([proposals_BxK1, jnp.full((b, 1), -1, jnp.int32)], axis=1)


def accept_prefix(keep_BxK1: jax.Array) -> jax.Array:
  """Length of the all-true prefix of each row."""
  return jnp.sum(jnp.cumprod(keep_BxK1.astype(jnp.int32), axis=1), axis=1).astype(jnp.int32)


def verify_reference(logits_BxKxV: jax.Array, proposals_BxK1: jax.Array, seed: jax.Array,
                     sampling: SamplingConfig) -> Verdict:
  """The `jnp` reference. `seed` is an int32 scalar that, with the sampling config, fixes the draws."""
  b, k, v = logits_BxKxV.shape
  logits_BxKxV = logits_BxKxV.astype(jnp.float32)
  checked_BxK = checked_tokens(proposals_BxK1)
  logprobs_BxKxV = jax.nn.log_softmax(logits_BxKxV, axis=-1)
  proposal_logprob_BxK1 = jnp.take_along_axis(logprobs_BxKxV[:, :-1], proposals_BxK1[..., None],
                                              axis=-1)[..., 0]
  if sampling.greedy:
    choice_BxK = jnp.argmax(logits_BxKxV, axis=-1).astype(jnp.int32)
    keep_BxK1 = proposals_BxK1 == choice_BxK[:, :-1]
  else:
    rows_BxK = jnp.arange(b)[:, None] * k + jnp.arange(k)
    scaled_BxKxV = filtered_logits(logits_BxKxV.reshape(b * k, v), sampling).reshape(b, k, v)
    # Accept proposal d with probability p(d), p the tempered and filtered distribution.
    p_checked_BxK1 = jnp.exp(
        jnp.take_along_axis(scaled_BxKxV[:, :-1], proposals_BxK1[..., None], axis=-1)[..., 0]
        - jax.nn.logsumexp(scaled_BxKxV[:, :-1], axis=-1))
    keep_BxK1 = noise.acceptance_uniform(seed, rows_BxK[:, :-1], v) < p_checked_BxK1
    # Each row's draw excludes the proposal it checks: at the first rejection that is exactly
    # the residual distribution; at the bonus row nothing is excluded.
    gumbel_BxKxV = noise.gumbel(seed, rows_BxK[..., None], jnp.arange(v))
    excluded_BxKxV = jnp.arange(v) == checked_BxK[..., None]
    perturbed_BxKxV = jnp.where(excluded_BxKxV, -jnp.inf, scaled_BxKxV + gumbel_BxKxV)
    choice_BxK = jnp.argmax(perturbed_BxKxV, axis=-1).astype(jnp.int32)
  accepted_B = accept_prefix(keep_BxK1)
  next_token_B = jnp.take_along_axis(choice_BxK, accepted_B[:, None], axis=1)[:, 0]
  return Verdict(accepted_B=accepted_B, next_token_B=next_token_B,
                 proposal_logprob_BxK1=proposal_logprob_BxK1)


def verify(logits_BxKxV: jax.Array, proposals_BxK1: jax.Array, seed: jax.Array,
           sampling: SamplingConfig, impl: str = "auto") -> Verdict:
  """Dispatch: "reference", "pallas" (interpreted on CPU), or "auto" = the kernel on TPU/GPU
  where it supports the sampling settings, else the reference."""
  if impl not in ("auto", "reference", "pallas"):
    raise ValueError(f"unknown verify implementation {impl!r}; use auto, reference or pallas")
  supported = verify_accept.supports(sampling)
  if impl == "pallas" and not supported:
    raise ValueError("the Pallas verify kernel does not filter by top-k/top-p; use the reference")
  use_kernel = impl == "pallas" or (impl == "auto" and supported
                                     and jax.default_backend() in ("tpu", "gpu"))
  if not use_kernel:
    return verify_reference(logits_BxKxV, proposals_BxK1, seed, sampling)
  accepted_B, next_token_B, proposal_logprob_BxK1 = verify_accept.verify_accept(
      logits_BxKxV, proposals_BxK1, seed, temperature=sampling.temperature,
      interpret=jax.default_backend() == "cpu")
  return Verdict(accepted_B, next_token_B, proposal_logprob_BxK1)
