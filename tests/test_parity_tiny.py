"""Our decoder vs transformers on tiny random Llama / Qwen2 / Qwen3 / Qwen3-MoE models (fp32,
<= 1e-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import tiny_hf_model

from draftopd_jax.io.hf import load_hf_folder
from draftopd_jax.models import KVCache, forward
from draftopd_jax.models.transformer import split_layers

TOL = 1e-4
# HF applies the final norm to its last hidden state; ours are raw layer outputs, so skip it.
LAYER_IDS = (0, 1)
CASES = [
    ("llama", False, None),
    ("llama", True, None),
    ("qwen2", False, None),
    ("qwen2", True, None),
    ("qwen3", False, None),
    ("qwen3", True, None),
    ("llama", False, {"rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0}),
    ("llama", True, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                     "rope_theta": 500_000.0}),
    ("qwen3", False, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                      "rope_theta": 1_000_000.0}),
    ("qwen3_moe", False, None),  # expert layers around a dense one (mlp_only_layers), dense dispatch
    ("qwen3_moe", True, None),  # one expert layer (decoder_sparse_step=2), ragged dispatch
]


def _ids(case):
  family, tie, rope = case
  return f"{family}-{'tied' if tie else 'untied'}-{(rope or {}).get('rope_type', 'default')}"


@pytest.fixture(scope="module", params=CASES, ids=_ids)
def pair(request, tmp_path_factory):
  family, tie, rope = request.param
  hf = tiny_hf_model(family, tie, rope)
  folder = tmp_path_factory.mktemp(_ids(request.param))
  hf.save_pretrained(folder, max_shard_size="60KB")  # several shards, as large checkpoints have
  cfg, params = load_hf_folder(folder)
  if family == "qwen3_moe" and tie:
    cfg = cfg.replace(moe_dispatch="ragged")
  return hf, cfg, params


def _reference(hf, tokens_BxT):
  with torch.no_grad():
    out = hf(torch.tensor(tokens_BxT), output_hidden_states=True)
  hidden = np.stack([out.hidden_states[i + 1].numpy() for i in LAYER_IDS], axis=2)
  return out.logits.numpy(), hidden


def _tokens(cfg, batch=2, length=24, seed=0):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, length))


def test_config_read_from_the_sharded_checkpoint(pair):
  hf, cfg, _ = pair
  assert cfg.family == hf.config.model_type
  assert cfg.tie_embeddings == hf.config.tie_word_embeddings
  assert cfg.num_layers == hf.config.num_hidden_layers


def test_full_sequence_logits_and_hidden_states(pair):
  hf, cfg, params = pair
  tokens = _tokens(cfg)
  b, t = tokens.shape
  out = forward(cfg, params, jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(t), (b, t)),
                KVCache.create(cfg, b, t), LAYER_IDS)
  ref_logits, ref_hidden = _reference(hf, tokens)
  np.testing.assert_allclose(out.logits_BxTxV, ref_logits, atol=TOL, rtol=0)
  np.testing.assert_allclose(out.hidden_BxTxFxD, ref_hidden, atol=TOL, rtol=0)


@pytest.mark.parametrize("loop", [False, True], ids=["scanned", "unrolled"])
def test_both_layer_paths_return_any_requested_layers(pair, loop):
  """A single forward scans the layers, a decoding loop passes them split and unrolled; either
  returns the requested layers in the order asked, repeats included (a 2-tap drafter of a
  4-layer target taps one layer twice)."""
  hf, cfg, params = pair
  tokens = _tokens(cfg, seed=3)
  b, t = tokens.shape
  layers = split_layers(cfg, params) if loop else None
  out = forward(cfg, params, jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(t), (b, t)),
                KVCache.create(cfg, b, t), (1, 0, 1), layers)
  _, ref_hidden = _reference(hf, tokens)  # layers 0 and 1
  np.testing.assert_allclose(out.hidden_BxTxFxD, ref_hidden[:, :, [1, 0, 1]], atol=TOL, rtol=0)


def test_token_by_token_cached_decoding(pair):
  hf, cfg, params = pair
  tokens = _tokens(cfg, seed=1)
  b, t = tokens.shape
  ref_logits, _ = _reference(hf, tokens)
  step = jax.jit(lambda p, x, pos, c: forward(cfg, p, x, pos, c))
  cache = KVCache.create(cfg, b, t + 8)  # a cache longer than the sequence, as in decoding
  for i in range(t):
    out = step(params, jnp.asarray(tokens[:, i:i + 1]), jnp.full((b, 1), i), cache)
    cache = out.cache
    np.testing.assert_allclose(out.logits_BxTxV[:, 0], ref_logits[:, i], atol=TOL, rtol=0)


def test_multi_token_verification_on_a_cache(pair):
  """Prefill, then verify 5 tokens at once; then roll back 3 and verify a different block."""
  hf, cfg, params = pair
  tokens = _tokens(cfg, seed=2)
  b, t = tokens.shape
  ref_logits, _ = _reference(hf, tokens)
  positions = lambda lo, hi: jnp.broadcast_to(jnp.arange(lo, hi), (b, hi - lo))
  cache = forward(cfg, params, jnp.asarray(tokens[:, :10]), positions(0, 10),
                  KVCache.create(cfg, b, t)).cache
  wrong = (tokens[:, 10:15] + 1) % cfg.vocab_size  # a rejected block, written then overwritten
  cache_after_wrong = forward(cfg, params, jnp.asarray(wrong), positions(10, 15), cache).cache
  out = forward(cfg, params, jnp.asarray(tokens[:, 10:15]), positions(10, 15), cache_after_wrong)
  np.testing.assert_allclose(out.logits_BxTxV, ref_logits[:, 10:15], atol=TOL, rtol=0)
  # Per-sequence offsets: row 0 continues at 15, row 1 was rolled back to 12.
  start = np.array([15, 12])
  pos_Bx4 = start[:, None] + np.arange(4)
  block = np.take_along_axis(tokens, pos_Bx4, axis=1)
  out = forward(cfg, params, jnp.asarray(block), jnp.asarray(pos_Bx4), out.cache)
  expected = np.take_along_axis(ref_logits, pos_Bx4[:, :, None], axis=1)
  np.testing.assert_allclose(out.logits_BxTxV, expected, atol=TOL, rtol=0)
