"""Held-out acceptance length, measured with the engine on fixed prompt sets during training."""

import numpy as np

from draftopd_jax.data import prompts
from draftopd_jax.decoding.completions import encode_prompts, pad_batch
from draftopd_jax.io import LoadedModel
from draftopd_jax.training import trainer


class HeldoutTau:
  """Greedy speculative decoding of the first `num_prompts` prompts of each dataset."""

  def __init__(self, model: LoadedModel, datasets: tuple[str, ...], num_prompts: int,
               max_new_tokens: int, heldout_fraction: float):
    self.model, self.max_new_tokens = model, max_new_tokens
    self.batches = {
        name: pad_batch(encode_prompts(model, prompts.eval_prompts(name, num_prompts,
                                                                    heldout_fraction),
                                       chat_template=True), model.tokenizer.pad_id)
        for name in datasets}

  def __call__(self, drafter, drafter_params, target_params) -> dict[str, float]:
    """Per dataset ("heldout_tau/NAME") and their mean ("heldout_tau")."""
    taus = {f"heldout_tau/{name}": trainer.heldout_tau(
        self.model.cfg, target_params, drafter, drafter_params, *batch, self.max_new_tokens,
        self.model.tokenizer.eos_ids) for name, batch in self.batches.items()}
    return {"heldout_tau": float(np.mean(list(taus.values()))), **taus}
