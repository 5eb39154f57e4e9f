"""Validation loss: the SFT loss and its metrics on held-out corpus examples, without gradients.

Held-out tau says how well a drafter decodes; this says whether its training still generalizes.
The examples are the target's answers to held-out ShareGPT turns (`configs/corpus.py:heldout`),
never trained on, cut into fixed batches like the training stream's; DFlash's random anchors use
one fixed key, so every evaluation scores the same (anchor, slot) pairs. A training accuracy that
keeps rising while the validation accuracy stalls means the data, not the steps, is used up.
"""

from collections.abc import Sequence

import jax
import numpy as np

from draftopd_jax.sft import data
from draftopd_jax.training import trainer


class Validation:
  """Mean validation metrics of a drafter: `validation_loss`, and for DFlash
  `validation_accuracy_by_slot` (EAGLE-3: `validation_loss_by_step`)."""

  def __init__(self, loss: trainer.LossFn, examples: Sequence[data.Example], seq_len: int,
               batch_size: int, pad_id: int):
    self.loss = jax.jit(loss)
    # Whole batches only: one shape, one compilation.
    self.batches = [data.to_batch(examples[i:i + batch_size], seq_len, pad_id)
                    for i in range(0, len(examples) - batch_size + 1, batch_size)]

  def __call__(self, params, target_params) -> dict[str, float | list[float]]:
    """The metrics of `params`, the trainable weights a training step sees."""
    key = jax.random.key(0)
    per_batch = [jax.device_get(self.loss(params, key, target_params, *batch)[1])
                 for batch in self.batches]
    # Batches weigh by their labelled tokens where the loss reports them (DFlash), else alike.
    weights = np.array([m.get("tokens", 1) for m in per_batch], np.float64)
    return {f"validation_{name}": np.round(np.average([m[name] for m in per_batch], axis=0,
                                                      weights=weights), 4).tolist()
            for name in per_batch[0] if name != "tokens"}
