"""Held-out acceptance length, measured with the engine on fixed prompt sets during training."""

import numpy as np

from draftopd_jax.data import prompts
from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import engine
from draftopd_jax.evaluation import metrics
from draftopd_jax.io import LoadedModel
from draftopd_jax.models import ModelConfig


def heldout_taus(target_cfg: ModelConfig, target_params: dict, drafter, drafter_params,
                 prompt_BxP: np.ndarray, prompt_mask_BxP: np.ndarray, max_new_tokens: int,
                 eos_ids: tuple[int, ...]) -> list[float]:
  """Each response's tau under greedy speculative decoding of a fixed held-out batch."""
  state = engine.run(target_cfg, target_params, prompt_BxP, prompt_mask_BxP, drafter=drafter,
                     drafter_params=drafter_params, max_new_tokens=max_new_tokens,
                     eos_ids=eos_ids)
  return metrics.summarize(metrics.acceptance_lengths(state.trace),
                           drafter.block_size)["tau_per_response"]


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

  def per_response(self, drafter, drafter_params, target_params) -> dict[str, list[float]]:
    """Dataset name -> each prompt's tau, in prompt order."""
    return {name: heldout_taus(self.model.cfg, target_params, drafter, drafter_params, *batch,
                               self.max_new_tokens, self.model.tokenizer.eos_ids)
            for name, batch in self.batches.items()}

  def __call__(self, drafter, drafter_params, target_params) -> dict[str, float]:
    """Per dataset ("heldout_tau/NAME") and their mean ("heldout_tau")."""
    taus = {f"heldout_tau/{name}": float(np.mean(per_prompt)) for name, per_prompt in
            self.per_response(drafter, drafter_params, target_params).items()}
    return {"heldout_tau": float(np.mean(list(taus.values()))), **taus}


def format_taus(taus: dict[str, float]) -> str:
  """"heldout_tau 1.234, humaneval 1.200, ..." for a log line."""
  return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in taus.items())
