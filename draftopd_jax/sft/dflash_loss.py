"""DFlash SFT loss: random anchors over response tokens, one drafter pass for all blocks.

Per sequence, `num_anchors` anchors are drawn among positions whose next token is a response
token. Each block holds [token at anchor, MASK x (K-1)] and sees the target's features strictly
before its anchor (the block mask of `dflash.block_logits`); slot k is trained to predict the token
at anchor + k, with cross-entropy to that token or KL to the target's distribution there, and
optional position weights exp(-(k-1)/gamma). The frozen target runs inside the step, or its
features come from a feature cache; for KL that cache also holds the target's last layer, whose
final norm and LM head give the teacher at the labelled positions only.
"""

import jax
import jax.numpy as jnp
import optax

from draftopd_jax.models import ModelConfig, dflash, eagle3, forward_sequences, transformer
from draftopd_jax.training import trainer


def sample_anchors(rng: jax.Array, loss_mask_BxT: jax.Array, num_anchors: int
                   ) -> tuple[jax.Array, jax.Array]:
  """(anchor positions [B, N], valid [B, N]): distinct positions whose next token is a response
  token, uniformly at random (Gumbel top-k); rows with fewer candidates get invalid slots."""
  b, t = loss_mask_BxT.shape
  candidate_BxT = jnp.pad(loss_mask_BxT[:, 1:], ((0, 0), (0, 1)))
  scores_BxT = jnp.where(candidate_BxT, jax.random.gumbel(rng, (b, t)), -jnp.inf)
  best_BxN, anchors_BxN = jax.lax.top_k(scores_BxT, num_anchors)
  return anchors_BxN.astype(jnp.int32), jnp.isfinite(best_BxN)


def slot_weights(block_size: int, gamma: float) -> jax.Array:
  """Weight of slots 1..K-1: exp(-(k-1)/gamma), or all ones when gamma <= 0. DFlash's gamma is a
  decay length (`train.gamma`); Draft-OPD's `loss.gamma` is a ratio (`opd.losses`)."""
  k = jnp.arange(1, block_size, dtype=jnp.float32)
  return jnp.exp(-(k - 1) / gamma) if gamma > 0 else jnp.ones_like(k)


def cached_layer_ids(cfg: dflash.DFlashConfig, target_cfg: ModelConfig, distill: bool
                     ) -> tuple[int, ...]:
  """The target layers a feature cache holds for this loss: the drafter's taps, and for
  distillation the last layer (the teacher's logits are its final norm and LM head)."""
  return cfg.target_layer_ids + ((target_cfg.num_layers - 1,) if distill else ())


def loss_fn(drafter_params: dict, cfg: dflash.DFlashConfig, target_cfg: ModelConfig,
            target_params: dict, tokens_BxT: jax.Array, loss_mask_BxT: jax.Array, rng: jax.Array,
            *, num_anchors: int, gamma: float, distill: bool,
            features_BxTxFxD: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Weighted mean loss over valid (anchor, slot) pairs, and metrics. `features_BxTxFxD`: the
  target's tapped features from a feature cache (sft/feature_cache.py) instead of its forward
  here; with `distill`, followed by the target's last layer (`cached_layer_ids`). With a draft
  vocabulary the softmax runs over it, for the drafter and the teacher alike, and labels outside
  it are not trained."""
  b, t = tokens_BxT.shape
  k = cfg.block_size
  positions_BxT = jnp.broadcast_to(jnp.arange(t), (b, t))
  d2t_Vd = cfg.draft_ids()
  # rows [B, L, ...] of a [B, T, ...] array at positions [B, L]
  at = lambda x_BxTx_, pos_BxM: jnp.take_along_axis(x_BxTx_, pos_BxM[..., None], axis=1)
  if features_BxTxFxD is None:
    target = forward_sequences(target_cfg, target_params, tokens_BxT, cfg.target_layer_ids)
    features_BxTxFxD = target.hidden_BxTxFxD
    logits_BxTxVd = (target.logits_BxTxV if d2t_Vd is None else
                     target.logits_BxTxV[..., d2t_Vd])
    teacher_logits_at = lambda pos_BxM: at(logits_BxTxVd, pos_BxM)
  elif distill:
    last_BxTxD = features_BxTxFxD[:, :, -1].astype(target_cfg.jnp_dtype)
    features_BxTxFxD = features_BxTxFxD[:, :, :-1]
    head = transformer.bind(target_cfg, target_params)
    teacher_logits_at = lambda pos_BxM: head.lm_head_logits(
        head.final_norm(at(last_BxTxD, pos_BxM)), d2t_Vd)
  features_BxTxFxD = jax.lax.stop_gradient(features_BxTxFxD.astype(cfg.layer.jnp_dtype))
  cache = dflash.write_context(cfg, drafter_params, dflash.ContextCache.create(cfg, b, t),
                               features_BxTxFxD, positions_BxT)
  anchors_BxN, valid_BxN = sample_anchors(rng, loss_mask_BxT, num_anchors)
  anchor_tokens_BxN = jnp.take_along_axis(tokens_BxT, anchors_BxN, axis=1)
  student_BxNxK1xV = jax.nn.log_softmax(dflash.proposal_logits(
      cfg, drafter_params, target_cfg, target_params, anchor_tokens_BxN, anchors_BxN, cache),
      axis=-1)

  label_pos_BxNxK1 = anchors_BxN[..., None] + jnp.arange(1, k)
  in_range = label_pos_BxNxK1 < t
  label_pos_BxNxK1 = jnp.minimum(label_pos_BxNxK1, t - 1)
  gather = lambda x_BxT: jnp.take_along_axis(x_BxT, label_pos_BxNxK1.reshape(b, -1), axis=1
                                             ).reshape(label_pos_BxNxK1.shape)
  labels_BxNxK1 = gather(tokens_BxT)
  valid_BxNxK1 = valid_BxN[..., None] & in_range & gather(loss_mask_BxT)
  if d2t_Vd is not None:  # labels as draft ids
    labels_BxNxK1 = eagle3.draft_ids(d2t_Vd, target_cfg.vocab_size)[labels_BxNxK1]
    valid_BxNxK1 &= labels_BxNxK1 >= 0
    labels_BxNxK1 = jnp.maximum(labels_BxNxK1, 0)
  if distill:  # soft targets: the target's distribution for the token at anchor + k
    teacher_BxNK1xV = teacher_logits_at((label_pos_BxNxK1 - 1).reshape(b, -1))
    teacher_BxNxK1xV = jax.nn.softmax(jax.lax.stop_gradient(teacher_BxNK1xV), axis=-1).reshape(
        student_BxNxK1xV.shape)
    loss_BxNxK1 = -jnp.sum(teacher_BxNxK1xV * student_BxNxK1xV, axis=-1)
  else:
    loss_BxNxK1 = -jnp.take_along_axis(student_BxNxK1xV, labels_BxNxK1[..., None], -1)[..., 0]
  weights_BxNxK1 = valid_BxNxK1 * slot_weights(k, gamma)
  loss = jnp.sum(loss_BxNxK1 * weights_BxNxK1) / jnp.maximum(jnp.sum(weights_BxNxK1), 1e-6)
  correct_BxNxK1 = (jnp.argmax(student_BxNxK1xV, -1) == labels_BxNxK1) & valid_BxNxK1
  accuracy_K1 = correct_BxNxK1.sum((0, 1)) / jnp.maximum(valid_BxNxK1.sum((0, 1)), 1)
  return loss, {"loss": loss, "accuracy_by_slot": accuracy_K1,
                "tokens": jnp.sum(valid_BxNxK1)}


def batch_loss(*, cfg: dflash.DFlashConfig, target_cfg: ModelConfig, num_anchors: int,
               gamma: float, distill: bool) -> trainer.LossFn:
  """(params, key, target_params, tokens_BxT, loss_mask_BxT[, features_BxTxFxD]) ->
  (loss, metrics)."""

  def loss(params, key, target_params, tokens_BxT, loss_mask_BxT, features_BxTxFxD=None):
    return loss_fn(params, cfg, target_cfg, target_params, tokens_BxT, loss_mask_BxT, key,
                   num_anchors=num_anchors, gamma=gamma, distill=distill,
                   features_BxTxFxD=features_BxTxFxD)

  return loss


def step_fn(*, optimizer: optax.GradientTransformation, **loss_settings) -> trainer.StepFn:
  """(state, target_params, tokens_BxT, loss_mask_BxT[, features_BxTxFxD]) -> (state, metrics);
  `loss_settings` are `batch_loss`'s."""
  return trainer.step_fn(trainer.loss_gradients(batch_loss(**loss_settings)), optimizer)
