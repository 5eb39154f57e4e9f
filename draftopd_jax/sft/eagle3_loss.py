"""EAGLE-3 SFT loss: training-time test unrolled over `steps`, step weights decay**s.

Step s at index t predicts the token at t+2+s; its target is the frozen target's distribution at
t+1+s restricted to the draft vocabulary (soft cross-entropy), counted only where that index holds
a response token and the target's argmax lies inside the draft vocabulary.
"""

import jax
import jax.numpy as jnp
import optax

from draftopd_jax.models import ModelConfig, eagle3, forward_sequences
from draftopd_jax.training import trainer


def loss_fn(drafter_params: dict, cfg: eagle3.Eagle3Config, target_cfg: ModelConfig,
            target_params: dict, tokens_BxT: jax.Array, loss_mask_BxT: jax.Array, *,
            steps: int = 7, decay: float = 0.8) -> tuple[jax.Array, dict]:
  """`drafter_params` = {"model": ..., "d2t": ...}; gradients flow into "model" only."""
  b, t = tokens_BxT.shape
  d2t_Vd = drafter_params["d2t"]
  target = forward_sequences(target_cfg, target_params, tokens_BxT, cfg.target_layer_ids)
  features = jax.lax.stop_gradient(target.hidden_BxTxFxD)
  target_logits_BxTxV = jax.lax.stop_gradient(target.logits_BxTxV)
  teacher_all_BxTxVd = jax.nn.softmax(target_logits_BxTxV[..., d2t_Vd], axis=-1)
  in_draft_vocab_BxT = (eagle3.draft_ids(d2t_Vd, target_cfg.vocab_size) >= 0)[
      jnp.argmax(target_logits_BxTxV, -1)]
  logits_UxBxTxVd = eagle3.ttt_logits(cfg, drafter_params["model"], target_cfg, target_params,
                                      tokens_BxT, features, steps)
  total, weight_sum, step_losses = 0.0, 0.0, []
  for s in range(steps):
    where = eagle3.ttt_positions(t, s)
    teacher_BxTxVd = teacher_all_BxTxVd[:, where["teacher"]]
    label_T = where["label"]
    valid_BxT = ((label_T < t)[None] & loss_mask_BxT[:, jnp.minimum(label_T, t - 1)]
                 & in_draft_vocab_BxT[:, where["teacher"]])
    ce_BxT = -jnp.sum(teacher_BxTxVd * jax.nn.log_softmax(logits_UxBxTxVd[s], -1), -1)
    loss_s = jnp.sum(ce_BxT * valid_BxT) / jnp.maximum(jnp.sum(valid_BxT), 1)
    step_losses.append(loss_s)
    total += decay**s * loss_s
    weight_sum += decay**s
  loss = total / weight_sum
  return loss, {"loss": loss, "loss_by_step": jnp.stack(step_losses)}


def batch_loss(*, d2t_Vd: jax.Array, cfg: eagle3.Eagle3Config, target_cfg: ModelConfig,
               ttt_steps: int, ttt_decay: float) -> trainer.LossFn:
  """(model_params, key, target_params, tokens_BxT, loss_mask_BxT) -> (loss, metrics); the
  trainable weights are the drafter's "model", `d2t_Vd` stays fixed."""

  def loss(model_params, key, target_params, tokens_BxT, loss_mask_BxT):
    del key  # the EAGLE-3 loss draws nothing at random
    return loss_fn({"model": model_params, "d2t": d2t_Vd}, cfg, target_cfg, target_params,
                   tokens_BxT, loss_mask_BxT, steps=ttt_steps, decay=ttt_decay)

  return loss


def step_fn(*, optimizer: optax.GradientTransformation, **loss_settings) -> trainer.StepFn:
  """(state, target_params, tokens_BxT, loss_mask_BxT) -> (state, metrics); `loss_settings` are
  `batch_loss`'s."""
  return trainer.step_fn(trainer.loss_gradients(batch_loss(**loss_settings)), optimizer)
