"""Draft-OPD replay: re-draft the rollout's blocks with gradients and score the two streams.

The teacher is the frozen target as the rollout already ran it: its hidden states at every
committed position are the drafter's context, and each verify pass gives, at offset k of its
block, the target's distribution after the anchor and proposals 1..k-1 -- the committed prefix for
the response stream (those offsets follow accepted proposals), the draft prefix for the rejected
stream. Only the random-anchors ablation, whose blocks are not verify steps, needs a second target
pass over the finished sequences (`target_pass`).
* DFlash: one drafter forward over every planned block in parallel, with the block mask (a block
  sees the context strictly before its anchor). A block depends only on that context and its
  anchor token, so replay at a recorded anchor reproduces the rollout's logits.
* EAGLE-3: the training-time-test unroll, whose step s at index anchor-1 is the drafter's chain
  s steps into the block, fed the drafter's *own* proposals of the rollout as inputs: rejected
  tokens are scored under the prefix the drafter really drafted from. Its vocabulary is the draft
  vocabulary: committed tokens outside it leave the response stream, and the target's
  distributions are restricted to it (renormalized) for the full-vocabulary estimator.
"""

import flax
import jax
import jax.numpy as jnp

from draftopd_jax.decoding.engine import DecodeState
from draftopd_jax.models import ModelConfig, dflash, eagle3, forward_sequences
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.opd import losses
from draftopd_jax.opd.anchor_plan import AnchorPlan


@flax.struct.dataclass
class Teacher:
  """The frozen target's side of the loss for the replayed blocks (log-probs at temperature 1)."""
  features_BxSxFxD: jax.Array  # hidden states at the drafter's layers: the drafter's context
  response_logprob_BxNxK1: jax.Array  # log p(committed token at offset k | committed prefix)
  rows_BxNxK1xV: jax.Array | None  # full log p rows at offsets 1..K-1 (the full estimator)


def from_rollout(decoded: DecodeState) -> Teacher:
  """The teacher of blocks anchored where the rollout's verify steps were (`from_trace` plans);
  the rollout must have recorded its features (and its verify rows for the full estimator)."""
  trace = decoded.trace
  return Teacher(jax.lax.stop_gradient(decoded.features_BxSxFxD),
                 jax.lax.stop_gradient(trace.committed_logprob_BxNxK1),
                 jax.lax.stop_gradient(trace.verify_logprobs_BxNxK1xV))


def label_positions(tokens_BxS: jax.Array, anchor_pos_BxN: jax.Array, block_size: int
                    ) -> jax.Array:
  """Positions [B, N, K-1] of offsets 1..K-1 of every block (clipped to the sequence)."""
  return jnp.minimum(anchor_pos_BxN[..., None] + jnp.arange(1, block_size),
                     tokens_BxS.shape[1] - 1)


def target_pass(layer_ids: tuple[int, ...], target_cfg: ModelConfig, target_params: dict,
                tokens_BxS: jax.Array, anchor_pos_BxN: jax.Array, block_size: int,
                full_rows: bool) -> Teacher:
  """The teacher from one forward of the frozen target over the committed sequences, read at
  blocks anchored anywhere (committed prefixes only)."""
  b = tokens_BxS.shape[0]
  out = forward_sequences(target_cfg, target_params, tokens_BxS, layer_ids)
  logprobs_BxSxV = jax.nn.log_softmax(out.logits_BxTxV.astype(jnp.float32), axis=-1)
  label_pos_BxNxK1 = label_positions(tokens_BxS, anchor_pos_BxN, block_size)
  # Logits row t predicts the token at t + 1.
  rows_BxNxK1xV = jnp.take_along_axis(logprobs_BxSxV, (label_pos_BxNxK1 - 1).reshape(b, -1, 1),
                                      axis=1).reshape(*label_pos_BxNxK1.shape, -1)
  labels_BxNxK1 = jnp.take_along_axis(tokens_BxS, label_pos_BxNxK1.reshape(b, -1), axis=1
                                      ).reshape(label_pos_BxNxK1.shape)
  response_logprob_BxNxK1 = jnp.take_along_axis(rows_BxNxK1xV, labels_BxNxK1[..., None],
                                                axis=-1)[..., 0]
  return jax.lax.stop_gradient(Teacher(out.hidden_BxTxFxD, response_logprob_BxNxK1,
                                       rows_BxNxK1xV if full_rows else None))


def dflash_logprobs(cfg: dflash.DFlashConfig, drafter_params: dict, target_cfg: ModelConfig,
                    target_params: dict, tokens_BxS: jax.Array, features_BxSxFxD: jax.Array,
                    plan: AnchorPlan) -> jax.Array:
  """Drafter log-probs [B, N, K-1, V] of slots 1..K-1 of every planned block."""
  b, s = tokens_BxS.shape
  positions_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
  cache = dflash.write_context(cfg, drafter_params, dflash.ContextCache.create(cfg, b, s),
                               features_BxSxFxD, positions_BxS)
  anchor_tokens_BxN = jnp.take_along_axis(tokens_BxS, plan.anchor_pos_BxN, axis=1)
  logits_BxNxK1xVd = dflash.proposal_logits(cfg, drafter_params, target_cfg, target_params,
                                            anchor_tokens_BxN, plan.anchor_pos_BxN, cache)
  return jax.nn.log_softmax(logits_BxNxK1xVd, axis=-1)


def eagle3_logprobs(cfg: eagle3.Eagle3Config, drafter_params: dict, target_cfg: ModelConfig,
                    target_params: dict, tokens_BxS: jax.Array, features_BxSxFxD: jax.Array,
                    plan: AnchorPlan) -> jax.Array:
  """Draft-vocabulary log-probs [B, N, K-1, Vd] of offsets 1..K-1 of every planned block: TTT
  step s at index anchor-1, fed the block's proposals 1..s (drafted blocks) or the committed
  tokens (the random-anchors ablation's blocks)."""
  b, s = tokens_BxS.shape
  k1 = cfg.block_size - 1
  rows_Bx1 = jnp.arange(b)[:, None]
  index_BxN = jnp.maximum(plan.anchor_pos_BxN - 1, 0)
  inputs = []
  for step in range(k1):
    where = eagle3.ttt_positions(s, step)["input_token"]
    tokens_for_step_BxS = jnp.take_along_axis(tokens_BxS, jnp.broadcast_to(where, (b, s)), 1)
    if step > 0:  # drafted blocks take the drafter's own proposal `step` as the input
      target_BxN = jnp.where(plan.drafted_BxN, index_BxN, s)  # s: out of range, dropped
      tokens_for_step_BxS = tokens_for_step_BxS.at[rows_Bx1, target_BxN].set(
          plan.proposals_BxNxK1[:, :, step - 1], mode="drop")
    inputs.append(tokens_for_step_BxS)
  logits_UxBxSxVd = eagle3.ttt_logits(cfg, drafter_params["model"], target_cfg, target_params,
                                      tokens_BxS, features_BxSxFxD, k1, jnp.stack(inputs))
  at_anchor_UxBxNxVd = jnp.take_along_axis(logits_UxBxSxVd, index_BxN[None, ..., None], axis=2)
  return jax.nn.log_softmax(at_anchor_UxBxNxVd.transpose(1, 2, 0, 3), axis=-1)


def _restricted(logprobs_xV: jax.Array, d2t_Vd: jax.Array) -> jax.Array:
  """A target distribution restricted to the draft vocabulary, renormalized."""
  return jax.nn.log_softmax(logprobs_xV[..., d2t_Vd], axis=-1)


def loss_fn(trainable_params: dict, drafter, d2t_Vd: jax.Array | None, target_cfg: ModelConfig,
            target_params: dict, tokens_BxS: jax.Array, plan: AnchorPlan, teacher: Teacher,
            options: losses.LossOptions) -> tuple[jax.Array, dict]:
  """The Draft-OPD loss of one rollout batch, and diagnostics. `trainable_params` are the DFlash
  weights, or the EAGLE-3 "model" weights (with `d2t_Vd` fixed). The full-vocabulary estimator
  needs the teacher's rows."""
  b, _ = tokens_BxS.shape
  label_pos_BxNxK1 = label_positions(tokens_BxS, plan.anchor_pos_BxN, drafter.block_size)
  labels_BxNxK1 = jnp.take_along_axis(tokens_BxS, label_pos_BxNxK1.reshape(b, -1), axis=1
                                      ).reshape(label_pos_BxNxK1.shape)
  rows_BxNxK1xV = teacher.rows_BxNxK1xV
  if options.estimator == "full" and rows_BxNxK1xV is None:
    raise ValueError("the full-vocabulary estimator needs the teacher's rows: record the verify "
                     "passes' log-probs in the rollout")
  if isinstance(drafter, DFlashDrafter):
    student = dflash_logprobs(drafter.cfg, trainable_params, target_cfg, target_params,
                              tokens_BxS, teacher.features_BxSxFxD, plan)
    d2t_Vd = drafter.cfg.draft_ids()
  elif isinstance(drafter, Eagle3Drafter):
    student = eagle3_logprobs(drafter.cfg, {"model": trainable_params, "d2t": d2t_Vd}, target_cfg,
                              target_params, tokens_BxS, teacher.features_BxSxFxD, plan)
  else:
    raise ValueError(f"Draft-OPD replays DFlash and EAGLE-3 drafters, not {type(drafter).__name__}")
  response_ids, in_vocab = labels_BxNxK1, jnp.ones_like(labels_BxNxK1, bool)
  rejected_ids = plan.proposals_BxNxK1
  if d2t_Vd is not None:  # token ids as draft ids, the teacher restricted to the draft vocabulary
    t2d_V = eagle3.draft_ids(d2t_Vd, target_cfg.vocab_size)
    response_ids = jnp.maximum(t2d_V[labels_BxNxK1], 0)
    in_vocab = t2d_V[labels_BxNxK1] >= 0
    rejected_ids = jnp.maximum(t2d_V[plan.proposals_BxNxK1], 0)  # proposals are in the vocab
    if rows_BxNxK1xV is not None:
      rows_BxNxK1xV = _restricted(rows_BxNxK1xV, d2t_Vd)
  return losses.two_stream_loss(
      student, plan, options, response_ids_BxNxK1=response_ids, response_valid_BxNxK1=in_vocab,
      response_teacher_logprob_BxNxK1=teacher.response_logprob_BxNxK1,
      rejected_ids_BxNxK1=rejected_ids, teacher_BxNxK1xV=rows_BxNxK1xV)
