"""The Draft-OPD replay plan: which blocks to re-draft with gradients, from a rollout's trace.

Every verify step of the rollout becomes one replayed block (digest §2.3):
* its anchor is where inference started the block: the previous step's bonus/correction token
  (for the first step, the prefill token). The official code instead anchors the first block at
  the last prompt token, making it predict the prefill token, which inference never drafts; we
  follow inference, so that every replayed block is a block the drafter really drafted;
* its committed segment (the response stream) is offsets 1..min(committed, K-1): the accepted
  proposals and the correction token (the bonus after a fully accepted block lies past slot K-1);
  with `include_correction=False` (the paper's partition) only the accepted ones;
* its rejected records (the rejected stream) are the drafter's own proposals at offsets
  accepted+1..K-1 with the target's log-probs from the verify pass.
Everything is fixed-shape [B, N] / [B, N, K-1] (N = trace length) and jit-friendly.
"""

import flax
import jax
import jax.numpy as jnp

from draftopd_jax.decoding.engine import Trace


@flax.struct.dataclass
class AnchorPlan:
  anchor_pos_BxN: jax.Array  # absolute position of each block's slot-0 token (0 where unused)
  segment_BxN: jax.Array  # response-stream offsets 1..segment
  rejected_BxNxK1: jax.Array  # bool: offset k (index k-1) holds a rejected proposal
  proposals_BxNxK1: jax.Array  # the drafter's proposals in the rollout (target ids)
  rejected_logprob_BxNxK1: jax.Array  # target log p(proposal | prefix, earlier proposals)
  first_rejected_BxN: jax.Array  # 1-based offset of the first rejection; 0 when none
  drafted_BxN: jax.Array  # bool: a block the rollout drafted (its proposals are real)

  @property
  def response_BxNxK1(self) -> jax.Array:
    """bool: offset k (index k-1) is in the response stream."""
    offsets = jnp.arange(1, self.rejected_BxNxK1.shape[-1] + 1)
    return offsets <= self.segment_BxN[..., None]


def from_trace(trace: Trace, block_size: int, include_correction: bool = True) -> AnchorPlan:
  n = trace.anchor_pos_BxN.shape[1]
  used_BxN = jnp.arange(n) < trace.num_steps_B[:, None]
  accepted_BxN = trace.accepted_BxN
  # Committed tokens past the accepted proposals are the correction (or, when all K-1 were
  # accepted, the bonus, which no slot predicts); EOS and the length limit cut both.
  committed_BxN = jnp.minimum(trace.committed_BxN, block_size - 1)
  segment_BxN = committed_BxN if include_correction else jnp.minimum(committed_BxN, accepted_BxN)
  offsets_K1 = jnp.arange(1, block_size)
  rejected_BxNxK1 = used_BxN[..., None] & (offsets_K1 > accepted_BxN[..., None])
  return AnchorPlan(
      anchor_pos_BxN=jnp.where(used_BxN, trace.anchor_pos_BxN, 0),
      segment_BxN=jnp.where(used_BxN, segment_BxN, 0),
      rejected_BxNxK1=rejected_BxNxK1,
      proposals_BxNxK1=trace.proposals_BxNxK1,
      rejected_logprob_BxNxK1=trace.proposal_logprob_BxNxK1,
      first_rejected_BxN=jnp.where(used_BxN & (accepted_BxN < block_size - 1), accepted_BxN + 1,
                                   0),
      drafted_BxN=used_BxN)


def without_rejected(plan: AnchorPlan) -> AnchorPlan:
  """The naive target-assisted rollout ablation: the committed trajectory only."""
  return plan.replace(rejected_BxNxK1=jnp.zeros_like(plan.rejected_BxNxK1))


def random_anchors(plan: AnchorPlan, rng: jax.Array, prompt_lens_B: jax.Array,
                   lengths_B: jax.Array) -> AnchorPlan:
  """The random-anchors ablation: the same multiset of segment lengths per sequence, shuffled and
  placed at random non-overlapping positions of the response; the rejected stream stays at its
  true anchors, as extra blocks with empty segments. Returns a plan with 2N blocks."""
  b, n = plan.segment_BxN.shape
  order_key, gap_key = jax.random.split(rng)
  segments_BxN = plan.segment_BxN
  used_BxN = segments_BxN > 0
  # Shuffle the used segments to the front in random order.
  scores_BxN = jnp.where(used_BxN, jax.random.uniform(order_key, (b, n)), 2.0)
  shuffled_BxN = jnp.take_along_axis(segments_BxN, jnp.argsort(scores_BxN, axis=1), axis=1)
  used_BxN = shuffled_BxN > 0
  # Response tokens after the prefill token that no segment covers, spread over the gaps:
  # sorted uniform cut points in [0, free] give the gap before each segment.
  free_B = jnp.maximum(lengths_B - prompt_lens_B - 1 - shuffled_BxN.sum(1), 0)
  cuts_BxN = jnp.sort(jnp.where(
      used_BxN, jax.random.randint(gap_key, (b, n), 0, free_B[:, None] + 1), free_B[:, None]),
      axis=1)
  before_BxN = jnp.cumsum(shuffled_BxN, axis=1) - shuffled_BxN
  anchors_BxN = jnp.where(used_BxN, prompt_lens_B[:, None] + before_BxN + cuts_BxN, 0)
  no_rejected = jnp.zeros_like(plan.rejected_BxNxK1)
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)
  return AnchorPlan(
      anchor_pos_BxN=cat(anchors_BxN, plan.anchor_pos_BxN),
      segment_BxN=cat(shuffled_BxN, jnp.zeros_like(shuffled_BxN)),
      rejected_BxNxK1=cat(no_rejected, plan.rejected_BxNxK1),
      proposals_BxNxK1=cat(plan.proposals_BxNxK1, plan.proposals_BxNxK1),
      rejected_logprob_BxNxK1=cat(plan.rejected_logprob_BxNxK1, plan.rejected_logprob_BxNxK1),
      first_rejected_BxN=cat(jnp.zeros_like(plan.first_rejected_BxN), plan.first_rejected_BxN),
      drafted_BxN=cat(jnp.zeros_like(plan.drafted_BxN), plan.drafted_BxN))
