"""Draft-OPD's per-token losses and how the two token streams are combined (digest §2.5).

Two estimators of each KL:
* "sampled": the official code's single-token surrogates. Forward KL is the two-outcome
  (Bernoulli) KL on {y, not y} of the committed token y; reverse KL is the k3 estimator
  exp(d) - d - 1, d = log p(y) - log q(y), of the drafter's own (greedy) proposal y. Log-probs
  are clamped to [-10, log(1 - 1e-6)] (Bernoulli) and d to [-20, 20] (k3); each token's loss to
  [-10, 10], as the code does.
* "full": the paper's full-vocabulary KL(p || q) and KL(q || p).
The response stream can instead take hard cross-entropy on the committed token (`response_loss=
"ce"`), the forward KL to the target at temperature 0 when rollouts are greedy: SFT's loss, at the
rollout's anchors.
Two aggregations: "pooled" (one weighted token mean over both streams, the code) and
"mean_of_means" (the weighted mean of each stream, then their λ-weighted mean, the paper).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from draftopd_jax.opd.anchor_plan import AnchorPlan


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """How the two streams are scored; hashable, a static argument of the step."""
  estimator: str = "sampled"  # "sampled" (the code's surrogates) or "full" (full-vocab KLs)
  aggregation: str = "pooled"  # "pooled" (the code) or "mean_of_means" (the paper)
  response_direction: str = "forward"  # "reverse" = the all-reverse ablation
  rejected_direction: str = "reverse"  # "forward" = the all-forward ablation
  response_loss: str = "kl"  # "ce": hard cross-entropy on the committed token
  gamma: float = 0.8  # rejected-stream weights gamma^(offset-1)
  decay: bool = True  # False = the no-decay ablation
  first_rejected_only: bool = False  # the rejected stream keeps each block's first rejection only
  response_lambda: float = 1.0
  rejected_lambda: float = 1.0

  def __post_init__(self):
    for name, value, allowed in (
        ("estimator", self.estimator, ("sampled", "full")),
        ("aggregation", self.aggregation, ("pooled", "mean_of_means")),
        ("response_direction", self.response_direction, ("forward", "reverse")),
        ("rejected_direction", self.rejected_direction, ("forward", "reverse")),
        ("response_loss", self.response_loss, ("kl", "ce"))):
      if value not in allowed:
        raise ValueError(f"loss.{name}={value!r}; choose one of {allowed}")


LOGPROB_MIN = -10.0
LOGPROB_MAX = math.log1p(-1e-6)
LOSS_CLAMP = 10.0


def bernoulli_forward_kl(teacher_logprob: jax.Array, student_logprob: jax.Array) -> jax.Array:
  """KL(Bern(p) || Bern(q)) with p, q the teacher's and student's probability of the token."""
  lp = jnp.clip(teacher_logprob, LOGPROB_MIN, LOGPROB_MAX)
  lq = jnp.clip(student_logprob, LOGPROB_MIN, LOGPROB_MAX)
  p = jnp.exp(lp)
  loss = p * (lp - lq) + (1 - p) * (jnp.log1p(-p) - jnp.log1p(-jnp.exp(lq)))
  return jnp.clip(loss, -LOSS_CLAMP, LOSS_CLAMP)


def k3_reverse_kl(teacher_logprob: jax.Array, student_logprob: jax.Array) -> jax.Array:
  """One-sample estimate of KL(q || p) at a token drawn from q: exp(d) - d - 1, d = lp - lq."""
  d = jnp.clip(teacher_logprob - student_logprob, -20.0, 20.0)
  return jnp.clip(jnp.exp(d) - d - 1, -LOSS_CLAMP, LOSS_CLAMP)


def full_kl(from_logprobs_xV: jax.Array, to_logprobs_xV: jax.Array) -> jax.Array:
  """KL(a || b) over the last axis, from log-probabilities."""
  return jnp.sum(jnp.exp(from_logprobs_xV) * (from_logprobs_xV - to_logprobs_xV), axis=-1)


def token_loss(direction: str, estimator: str, teacher_logprob: jax.Array,
               student_logprob: jax.Array, teacher_logprobs_xV: jax.Array | None = None,
               student_logprobs_xV: jax.Array | None = None) -> jax.Array:
  """Per-token loss: `direction` "forward" (KL(p || q)) or "reverse" (KL(q || p)); the sampled
  estimators use the token's log-probs, the full ones the whole distributions."""
  if estimator == "sampled":
    fn = bernoulli_forward_kl if direction == "forward" else k3_reverse_kl
    return fn(teacher_logprob, student_logprob)
  if direction == "forward":
    return full_kl(teacher_logprobs_xV, student_logprobs_xV)
  return full_kl(student_logprobs_xV, teacher_logprobs_xV)


def rejected_slot_weights(block_size: int, gamma: float, decay: bool) -> jax.Array:
  """Weights of offsets 1..K-1 on the rejected stream: gamma^(offset-1), or ones. Draft-OPD's
  gamma is a ratio; DFlash SFT's `train.gamma` is a decay length (`sft.dflash_loss`)."""
  offsets = jnp.arange(1, block_size, dtype=jnp.float32)
  return gamma ** (offsets - 1) if decay else jnp.ones_like(offsets)


def combine(response_loss: jax.Array, response_weight: jax.Array, rejected_loss: jax.Array,
            rejected_weight: jax.Array, *, aggregation: str, response_lambda: float,
            rejected_lambda: float) -> jax.Array:
  """The scalar loss from per-token losses and weights (0 where a token is not in its stream)."""
  sum_a, count_a = jnp.sum(response_loss * response_weight), jnp.sum(response_weight)
  sum_r, count_r = jnp.sum(rejected_loss * rejected_weight), jnp.sum(rejected_weight)
  if aggregation == "pooled":
    return ((response_lambda * sum_a + rejected_lambda * sum_r)
            / jnp.maximum(response_lambda * count_a + rejected_lambda * count_r, 1e-6))
  if aggregation != "mean_of_means":
    raise ValueError(f"aggregation must be pooled or mean_of_means, got {aggregation!r}")
  # A stream with no tokens in the batch drops out instead of pulling the mean to zero.
  lam_a = jnp.where(count_a > 0, response_lambda, 0.0)
  lam_r = jnp.where(count_r > 0, rejected_lambda, 0.0)
  return ((lam_a * sum_a / jnp.maximum(count_a, 1e-6) + lam_r * sum_r / jnp.maximum(count_r, 1e-6))
          / jnp.maximum(lam_a + lam_r, 1e-6))


def _pick(logprobs_xV: jax.Array, ids_x: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logprobs_xV, ids_x[..., None], axis=-1)[..., 0]


def two_stream_loss(student_BxNxK1xV: jax.Array, plan: AnchorPlan, options: LossOptions, *,
                    response_ids_BxNxK1: jax.Array, response_valid_BxNxK1: jax.Array,
                    response_teacher_logprob_BxNxK1: jax.Array, rejected_ids_BxNxK1: jax.Array,
                    teacher_BxNxK1xV: jax.Array | None) -> tuple[jax.Array, dict]:
  """The Draft-OPD loss from the replayed drafter log-probs (over the drafter's vocabulary, ids in
  it) and the teacher: token log-probs always (the rejected stream's are in the plan), and where
  `options.estimator == "full"` the full rows at each offset, which serve both streams (a response
  offset's prefix is committed, a rejected offset's is the drafter's)."""
  k = student_BxNxK1xV.shape[2] + 1
  response_logprob_BxNxK1 = _pick(student_BxNxK1xV, response_ids_BxNxK1)
  if options.response_loss == "ce":
    response_loss = -response_logprob_BxNxK1
  else:
    response_loss = token_loss(options.response_direction, options.estimator,
                               response_teacher_logprob_BxNxK1, response_logprob_BxNxK1,
                               teacher_BxNxK1xV, student_BxNxK1xV)
  response = plan.response_BxNxK1 & response_valid_BxNxK1
  rejected_loss = token_loss(options.rejected_direction, options.estimator,
                             plan.rejected_logprob_BxNxK1,
                             _pick(student_BxNxK1xV, rejected_ids_BxNxK1),
                             teacher_BxNxK1xV, student_BxNxK1xV)
  rejected_weight = plan.rejected_BxNxK1 * rejected_slot_weights(k, options.gamma, options.decay)
  if options.first_rejected_only:
    offsets_K1 = jnp.arange(1, k)
    rejected_weight *= offsets_K1 == plan.first_rejected_BxN[..., None]
  loss = combine(response_loss, response.astype(jnp.float32), rejected_loss, rejected_weight,
                 aggregation=options.aggregation, response_lambda=options.response_lambda,
                 rejected_lambda=options.rejected_lambda)
  argmax_BxNxK1 = jnp.argmax(student_BxNxK1xV, axis=-1)
  return loss, diagnostics(plan, response, response_loss, rejected_loss,
                           argmax_BxNxK1 == response_ids_BxNxK1,
                           argmax_BxNxK1 == rejected_ids_BxNxK1,
                           rejected_ids_BxNxK1 == response_ids_BxNxK1)


def diagnostics(plan: AnchorPlan, response: jax.Array, response_loss: jax.Array,
                rejected_loss: jax.Array, response_hit: jax.Array, proposal_hit: jax.Array,
                proposal_committed: jax.Array) -> dict:
  """Stream means, the make-up of the replayed tokens, how well replay matches the rollout, and
  how often a rejected-suffix proposal is the token committed at its position anyway."""
  offsets = jnp.arange(1, plan.rejected_BxNxK1.shape[-1] + 1)
  first = plan.first_rejected_BxN[..., None]
  rejected = plan.rejected_BxNxK1
  replayed = jnp.maximum(jnp.sum(response | rejected), 1)
  mean = lambda x, m: jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1)
  return {
      "response_loss": mean(response_loss, response), "rejected_loss": mean(rejected_loss, rejected),
      "response_tokens": jnp.sum(response), "rejected_tokens": jnp.sum(rejected),
      "share_accepted": jnp.sum(response & ((first == 0) | (offsets < first))) / replayed,
      "share_first_rejected": jnp.sum(rejected & (offsets == first)) / replayed,
      "share_rejected_suffix": jnp.sum(rejected & (offsets > first)) / replayed,
      # A suffix proposal after a rejection that the target committed at that position all the
      # same: the rejected stream pushes down a token the drafter had right.
      "suffix_proposal_committed": mean(proposal_committed, rejected & (offsets > first)),
      "response_accuracy": mean(response_hit, response),
      # The replayed drafter's greedy tokens equal the proposals it made in the rollout (1.0 when
      # replay is exact and the weights have not moved).
      "replay_agreement": mean(proposal_hit, rejected),
  }
