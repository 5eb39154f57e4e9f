"""The anchor-gap diagnostic: SFT's teacher-forced drafter, read at the engine's anchors, is the
drafter the engine ran (same proposals, same first-slot acceptance)."""

import jax
import numpy as np
import pytest

from draftopd_jax.decoding import engine
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.evaluation.anchor_gap import anchor_gap, teacher_forced_proposals
from draftopd_jax.models import ModelConfig, dflash, init_params
from draftopd_jax.models.drafters import DFlashDrafter

# A 6-token vocabulary, so that an untrained drafter gets some proposals accepted.
TARGET = ModelConfig(family="qwen3", vocab_size=6, hidden_size=32, num_layers=4, num_heads=4,
                     num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
TARGET_PARAMS = jax.tree.map(lambda x: x * 2, init_params(TARGET, seed=5))
PROMPTS = [[1, 2, 3, 4, 0], [5, 1], [2, 2, 4]]


@pytest.mark.parametrize("vocab_ids", [(), (0, 1, 2, 4)])
def test_teacher_forced_proposals_at_the_engines_anchors_are_the_engines(vocab_ids):
  cfg = dflash.DFlashConfig.for_target(TARGET, num_layers=2, block_size=5, mask_token_id=5,
                                       vocab_ids=vocab_ids)
  params = jax.tree.map(lambda x: x * 0.9, dflash.init_params(cfg, seed=0))
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  state = engine.run(TARGET, TARGET_PARAMS, tokens, mask, drafter=DFlashDrafter(cfg),
                     drafter_params=params, max_new_tokens=30)
  trace = jax.device_get(state.trace)
  proposals_BxSxK1 = np.asarray(teacher_forced_proposals(cfg, params, TARGET, TARGET_PARAMS,
                                                         state.tokens_BxS))
  for row in range(len(PROMPTS)):
    steps = trace.num_steps_B[row]
    anchors_N = trace.anchor_pos_BxN[row, :steps]
    np.testing.assert_array_equal(proposals_BxSxK1[row, anchors_N],
                                  trace.proposals_BxNxK1[row, :steps])

  gap = anchor_gap(cfg, params, TARGET, TARGET_PARAMS, state)
  assert 0 < gap["engine_first_slot_acceptance"] < 1  # both outcomes exercised
  assert gap["on_policy_accuracy_by_slot"][0] == pytest.approx(gap["engine_first_slot_acceptance"])
  new_tokens = np.asarray(state.lengths_B - state.prompt_lens_B)
  assert gap["uniform_blocks"] == new_tokens.sum()
  # Every verify step but a last one that ends exactly at the length limit labels a token.
  assert sum(trace.num_steps_B) - len(PROMPTS) <= gap["on_policy_blocks"] <= sum(trace.num_steps_B)
  assert gap["anchor_share"] == pytest.approx(gap["on_policy_blocks"] / gap["uniform_blocks"])
