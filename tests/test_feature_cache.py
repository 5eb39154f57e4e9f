"""The on-disk target feature cache: the target's taps, resumable, keyed by what made them, and a
DFlash SFT step on them equal to the online step."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from draftopd_jax.models import KVCache, ModelConfig, dflash, forward, init_params
from draftopd_jax.sft import data, dflash_loss, feature_cache

CFG = ModelConfig(family="qwen3", vocab_size=53, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
PARAMS = init_params(CFG, seed=3)
LAYERS = (0, 2)
rng = np.random.default_rng(0)
EXAMPLES = [(rng.integers(1, 53, rng.integers(3, 12)).tolist(),
             rng.integers(1, 53, rng.integers(1, 20)).tolist()) for _ in range(7)]
SEQ_LEN = 24


def online_features(examples, layer_ids=LAYERS):
  tokens, _ = data.to_batch([data.Example(tuple(p), tuple(r)) for p, r in examples], SEQ_LEN, 0)
  b, t = tokens.shape
  out = forward(CFG, PARAMS, jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(t), (b, t)),
                KVCache.create(CFG, b, t), layer_ids)
  return tokens, np.asarray(out.hidden_BxTxFxD)


def build(cache_dir, examples=EXAMPLES, layer_ids=LAYERS, seq_len=SEQ_LEN):
  return feature_cache.build(examples, CFG, PARAMS, "tiny", layer_ids, seq_len, cache_dir,
                             batch_size=2, show_progress=False)


def test_cached_features_are_the_targets_taps_in_bfloat16(tmp_path):
  cache = build(tmp_path)
  indices = [4, 0, 6]
  got = cache.batch(indices, SEQ_LEN)
  assert got.dtype == ml_dtypes.bfloat16 and got.shape == (3, SEQ_LEN, len(LAYERS), 32)
  _, want = online_features([EXAMPLES[i] for i in indices])
  for row, i in enumerate(indices):
    n = min(len(EXAMPLES[i][0]) + len(EXAMPLES[i][1]), SEQ_LEN)
    np.testing.assert_allclose(got[row, :n].astype(np.float32), want[row, :n], rtol=1e-2,
                               atol=1e-2)
    assert not got[row, n:].astype(np.float32).any()  # padding, never seen as context
  assert cache.manifest["tokens"] == sum(min(len(p) + len(r), SEQ_LEN) for p, r in EXAMPLES)
  assert cache.manifest["build_flops"] > 0


def test_a_stopped_build_resumes_to_the_same_cache(tmp_path, monkeypatch):
  whole = build(tmp_path / "whole").batch(range(len(EXAMPLES)), SEQ_LEN)
  real, calls = feature_cache._features, []

  def dies_on_third_batch(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(feature_cache, "_features", dies_on_third_batch)
  with pytest.raises(KeyboardInterrupt):
    build(tmp_path / "resumed")
  monkeypatch.setattr(feature_cache, "_features", real)
  [folder] = (tmp_path / "resumed").iterdir()
  assert not (folder / "manifest.json").exists()  # incomplete: never served
  resumed = build(tmp_path / "resumed")
  np.testing.assert_array_equal(resumed.batch(range(len(EXAMPLES)), SEQ_LEN).view(np.uint16),
                                whole.view(np.uint16))


def test_other_examples_taps_or_lengths_get_their_own_cache(tmp_path):
  roots = {tuple(build(tmp_path).roots),
           tuple(build(tmp_path, examples=EXAMPLES[:-1]).roots),
           tuple(build(tmp_path, layer_ids=(1, 2)).roots),
           tuple(build(tmp_path, seq_len=16).roots)}
  assert len(roots) == 4
  assert tuple(build(tmp_path).roots) in roots  # the same settings find the same cache


def test_a_growing_corpus_adds_chunks_and_keeps_the_ones_it_has(tmp_path, monkeypatch):
  whole = build(tmp_path / "one_chunk").batch(range(len(EXAMPLES)), SEQ_LEN)
  monkeypatch.setattr(feature_cache, "CHUNK", 3)
  first = build(tmp_path / "chunks", examples=EXAMPLES[:4])
  kept = (first.roots[0] / "features.npy").stat().st_mtime_ns
  grown = build(tmp_path / "chunks")
  assert len(grown.roots) == 3 and grown.roots[0] == first.roots[0]
  assert (grown.roots[0] / "features.npy").stat().st_mtime_ns == kept  # not rebuilt
  assert grown.roots[1] != first.roots[1]  # that chunk changed: 1 example, then 3
  assert grown.manifest["examples"] == len(EXAMPLES)
  # the same features, up to bfloat16 rounding of batches padded to other widths
  np.testing.assert_allclose(grown.batch(range(len(EXAMPLES)), SEQ_LEN).astype(np.float32),
                             whole.astype(np.float32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("distill", [False, True])
def test_a_step_on_cached_features_equals_the_online_step(distill):
  cfg = dflash.DFlashConfig.for_target(CFG, num_layers=1, block_size=4, mask_token_id=0,
                                       target_layer_ids=LAYERS)
  drafter_params = dflash.init_params(cfg, seed=1)
  # For distillation the cache adds the target's last layer: the teacher at labelled positions.
  layer_ids = dflash_loss.cached_layer_ids(cfg, CFG, distill)
  assert layer_ids == LAYERS + ((CFG.num_layers - 1,) if distill else ())
  tokens, features = online_features(EXAMPLES[:4], layer_ids)
  _, mask = data.to_batch([data.Example(tuple(p), tuple(r)) for p, r in EXAMPLES[:4]], SEQ_LEN, 0)
  loss = lambda **cached: dflash_loss.loss_fn(
      drafter_params, cfg, CFG, PARAMS, jnp.asarray(tokens), jnp.asarray(mask),
      jax.random.key(0), num_anchors=4, gamma=4.0, distill=distill, **cached)[0]
  np.testing.assert_allclose(loss(features_BxTxFxD=jnp.asarray(features)), loss(), rtol=1e-6)
