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


def grouped_heldout_taus(target_cfg: ModelConfig, target_params: dict, drafter, drafter_params,
                         rows: list[list[int]], pad_id: int, max_new_tokens: int,
                         eos_ids: tuple[int, ...], group_rows: int) -> list[float]:
  """`heldout_taus` of prompt token rows, decoded `group_rows` at a time in order of length,
  each group padded to its own longest prompt; the taus come back in the rows' order. A group's
  KV caches and attention then span its own prompts, not the set's longest: the first 64
  held-out ShareGPT prompts run to 4,374 tokens, and as one batch they needed more than 18 GB."""
  order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
  taus = [0.0] * len(rows)
  for start in range(0, len(rows), group_rows):
    group = order[start:start + group_rows]
    group_taus = heldout_taus(target_cfg, target_params, drafter, drafter_params,
                              *pad_batch([rows[i] for i in group], pad_id), max_new_tokens,
                              eos_ids)
    for i, tau in zip(group, group_taus):
      taus[i] = tau
  return taus


# Prompts per decoded group in `HeldoutTau`: training's evaluations (8 prompts a set) run as
# one batch; comparisons of 32 or more prompts a set run in groups of similar length.
HELDOUT_GROUP_ROWS = 16


class HeldoutTau:
  """Greedy speculative decoding of the first `num_prompts` prompts of each dataset, in groups
  of at most `group_rows` prompts of similar length (`grouped_heldout_taus`)."""

  def __init__(self, model: LoadedModel, datasets: tuple[str, ...], num_prompts: int,
               max_new_tokens: int, heldout_fraction: float,
               group_rows: int = HELDOUT_GROUP_ROWS):
    self.model, self.max_new_tokens, self.group_rows = model, max_new_tokens, group_rows
    self.prompts = {
        name: encode_prompts(model, prompts.eval_prompts(name, num_prompts, heldout_fraction),
                             chat_template=True)
        for name in datasets}

  def per_response(self, drafter, drafter_params, target_params) -> dict[str, list[float]]:
    """Dataset name -> each prompt's tau, in prompt order."""
    return {name: grouped_heldout_taus(self.model.cfg, target_params, drafter, drafter_params,
                                       rows, self.model.tokenizer.pad_id, self.max_new_tokens,
                                       self.model.tokenizer.eos_ids, self.group_rows)
            for name, rows in self.prompts.items()}

  def __call__(self, drafter, drafter_params, target_params) -> dict[str, float]:
    """Per dataset ("heldout_tau/NAME") and their mean ("heldout_tau")."""
    taus = {f"heldout_tau/{name}": float(np.mean(per_prompt)) for name, per_prompt in
            self.per_response(drafter, drafter_params, target_params).items()}
    return {"heldout_tau": float(np.mean(list(taus.values()))), **taus}


def format_taus(taus: dict[str, float]) -> str:
  """"heldout_tau 1.234, humaneval 1.200, ..." for a log line."""
  return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in taus.items())
