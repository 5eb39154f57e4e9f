"""Each DFlash recipe option changes exactly what it names: feature taps, the drafter's own final
norm, slot decay, the draft vocabulary; and drafters saved before an option existed load and
behave as before."""

import dataclasses
import functools
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from draftopd_jax.jobs.new_drafter import new_drafter
from draftopd_jax.models import KVCache, ModelConfig, dflash, forward, init_params
from draftopd_jax.sft.dflash_loss import slot_weights

TARGET_CFG = ModelConfig(family="llama", vocab_size=61, hidden_size=32, num_layers=8, num_heads=4,
                         num_kv_heads=2, head_dim=8, intermediate_size=48)
TARGET = init_params(TARGET_CFG, seed=5)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def drafter(**options):
  cfg = dflash.DFlashConfig.for_target(TARGET_CFG, num_layers=2, block_size=4, mask_token_id=60,
                                       **options)
  return cfg, dflash.init_params(cfg, seed=2)


@functools.partial(jax.jit, static_argnums=(0, 2))  # compiled once per config, not op by op
def logits(cfg, params, head=dflash.block_logits):
  tokens = jnp.asarray([[3, 9, 27, 14, 5, 41, 8, 30]])
  t = tokens.shape[1]
  hidden = forward(TARGET_CFG, TARGET, tokens, jnp.arange(t)[None],
                   KVCache.create(TARGET_CFG, 1, t), cfg.target_layer_ids).hidden_BxTxFxD
  cache = dflash.write_context(cfg, params, dflash.ContextCache.create(cfg, 1, t), hidden,
                               jnp.arange(t)[None])
  return head(cfg, params, TARGET_CFG, TARGET, tokens[:, 4:6], jnp.asarray([[4, 5]]), cache)


def test_feature_taps_follow_the_reference_spacing():
  assert dflash.default_layer_ids(30, 5) == (1, 8, 14, 20, 27)  # drafter-recipes.md, N = 30
  assert dflash.default_layer_ids(30, 2) == (1, 27)
  cfg, _ = drafter(num_taps=3)
  assert cfg.num_layers == 2 and cfg.target_layer_ids == dflash.default_layer_ids(8, 3)
  assert drafter()[0].target_layer_ids == dflash.default_layer_ids(8, 2)  # taps = layers


def test_own_final_norm_adds_one_trainable_norm_and_nothing_else():
  own_cfg, own = drafter()
  shared_cfg, shared = drafter(own_final_norm=False)
  assert own_cfg.own_final_norm and not shared_cfg.own_final_norm
  assert set(own) - set(shared) == {"final_norm"} and set(shared) <= set(own)
  # With the target's scale in it, the drafter's norm computes exactly the target's.
  own["final_norm"]["scale"] = TARGET["final_norm"]["scale"]
  np.testing.assert_allclose(logits(own_cfg, own), logits(shared_cfg, shared), atol=1e-6)
  own["final_norm"]["scale"] = own["final_norm"]["scale"] * 1.5
  assert not np.allclose(logits(own_cfg, own), logits(shared_cfg, shared), atol=1e-3)
  # Gradients reach the drafter's norm.
  grad = jax.grad(lambda p: jnp.sum(logits(own_cfg, p) ** 2))(own)
  assert float(jnp.abs(grad["final_norm"]["scale"]).sum()) > 0


def test_configs_saved_before_the_option_load_as_target_norm_drafters():
  cfg, _ = drafter(own_final_norm=False)
  saved = cfg.to_dict()
  del saved["own_final_norm"]  # as written by earlier versions
  assert dflash.DFlashConfig.from_dict(saved) == cfg


@pytest.mark.parametrize("gamma, expected", [(4.0, np.exp(-np.arange(7) / 4.0)),
                                             (0.0, np.ones(7))])
def test_slot_decay_weights(gamma, expected):
  np.testing.assert_allclose(slot_weights(8, gamma), expected, rtol=1e-6)


def test_a_draft_vocabulary_selects_rows_of_the_shared_head_and_round_trips():
  vocab = (1, 5, 9, 33, 60)
  cfg, params = drafter(vocab_ids=vocab)
  whole_cfg = dataclasses.replace(cfg, vocab_ids=())
  assert cfg.vocab_size == 5 and whole_cfg.vocab_size == TARGET_CFG.vocab_size
  assert set(params) == set(dflash.init_params(whole_cfg))  # no weights of its own
  np.testing.assert_allclose(logits(cfg, params, dflash.proposal_logits),
                             logits(whole_cfg, params)[:, :, 1:][..., list(vocab)], atol=1e-5)
  assert dflash.DFlashConfig.from_dict(cfg.to_dict()) == cfg
  saved = whole_cfg.to_dict()
  del saved["vocab_ids"]  # as written by earlier versions
  assert dflash.DFlashConfig.from_dict(saved) == whole_cfg
  for bad in ((5, 1), (1, 1), (-1, 2), (2, 61)):
    with pytest.raises(ValueError, match="vocab_ids must be distinct ascending token ids"):
      drafter(vocab_ids=bad)


def test_a_new_dflash_drafter_takes_the_most_frequent_tokens_as_its_vocabulary():
  c = runpy.run_path(str(ROOT / "configs" / "sft.py"))["get_config"]("quick").drafter
  assert c.draft_vocab_size == 0  # DFlash's default: the whole vocabulary
  counts = np.zeros(TARGET_CFG.vocab_size)
  counts[[7, 3, 50, 12]] = [5, 9, 2, 7]
  c.draft_vocab_size = 3
  drafter_, _ = new_drafter(c, TARGET_CFG, 0, lambda: counts)
  assert drafter_.cfg.vocab_ids == (3, 7, 12)
  c.draft_vocab_size = 0
  assert new_drafter(c, TARGET_CFG, 0, None)[0].cfg.vocab_ids == ()  # counts never asked for
