"""The while_loop generator on a tiny random model: equals a naive loop, padding either side,
per-sequence EOS and limits, and the sampling filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import whole_forward

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import SamplingConfig, generate
from draftopd_jax.decoding.continuous import generate_all
from draftopd_jax.errors import UserError
from draftopd_jax.models import KVCache, ModelConfig, forward, init_params, layers
from draftopd_jax.sampling import filtered_logits, sample

CFG = ModelConfig(family="qwen3", vocab_size=53, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
PARAMS = jax.tree.map(lambda x: x * 4, init_params(CFG, seed=3))  # sharper logits, varied text
PROMPTS = [[5, 9, 2, 7], [11, 3, 8, 1, 4, 6, 10, 12, 13], [20]]


def naive_greedy(prompt: list[int], n: int, width: int = 32) -> list[int]:
  """Recomputes the whole sequence every step (`reference.whole_forward`)."""
  tokens = list(prompt)
  for _ in range(n):
    logits = whole_forward(CFG, PARAMS, tokens, width).logits_BxTxV
    tokens.append(int(jnp.argmax(logits[0, -1])))
  return tokens[len(prompt):]


@pytest.fixture(scope="module")
def references():
  return [naive_greedy(p, 12) for p in PROMPTS]


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_batched_greedy_equals_naive_loop(references, left):
  tokens, mask = pad_batch(PROMPTS, pad_id=0, left=left)
  assert generate(CFG, PARAMS, tokens, mask, max_new_tokens=12) == references


def test_a_batch_on_the_fused_score_path_equals_naive_loop(references):
  # 48 rows x 2 KV heads reach layers.FUSED_SCORE_MATRICES: decoding scores are multiply-adds.
  tokens, mask = pad_batch(PROMPTS * 16, pad_id=0, left=True)
  assert tokens.shape[0] * CFG.num_kv_heads >= layers.FUSED_SCORE_MATRICES
  assert generate(CFG, PARAMS, tokens, mask, max_new_tokens=12) == references * 16


@pytest.mark.parametrize("batch,rows,slots",
                         [(48, 2, 37), (48, 2, 512), (1, 2, 37), (48, 16, 37)],
                         ids=["fused", "einsum-aligned-slots", "einsum-one-row", "einsum-long-query"])
def test_cache_scores_equal_the_einsum_on_either_path(batch, rows, slots):
  q_BxKxRxH = jax.random.normal(jax.random.key(0), (batch, 2, rows, 8))
  k_BxKxHxS = jax.random.normal(jax.random.key(1), (batch, 2, 8, slots))
  np.testing.assert_allclose(layers.cache_scores(q_BxKxRxH, k_BxKxHxS),
                             jnp.einsum("bkqh,bkhs->bkqs", q_BxKxRxH, k_BxKxHxS), rtol=1e-5,
                             atol=1e-5)


def test_eos_stops_each_sequence_on_its_own(references):
  eos = references[1][4]  # the 5th token of the second prompt
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  out = generate(CFG, PARAMS, tokens, mask, max_new_tokens=12, eos_ids=(eos,))
  for got, ref in zip(out, references):
    cut = ref.index(eos) + 1 if eos in ref else len(ref)
    assert got == ref[:cut]
  assert out[1][-1] == eos and len(out[1]) <= 5


def test_max_new_tokens_and_progress_chunks(references):
  class Bar:
    total = 0
    def update(self, n):
      self.total += n
  bar = Bar()
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  out = generate(CFG, PARAMS, tokens, mask, max_new_tokens=7, progress=bar, chunk=2)
  assert out == [r[:7] for r in references]
  assert bar.total == 3 * 7


@pytest.mark.parametrize("refill_rows", [1, 2])
def test_continuous_batching_refills_finished_rows_and_equals_greedy(references, refill_rows):
  # EOS ends the rows at different steps, so rows are refilled mid-run, one or two at a time.
  eos = references[1][4]
  prompts = PROMPTS + [PROMPTS[0][:2], PROMPTS[1][3:]]
  expected = [naive_greedy(p, 12) for p in prompts]
  expected = [r[:r.index(eos) + 1] if eos in r else r for r in expected]
  bar = type("Bar", (), {"total": 0, "update": lambda self, n: setattr(self, "total",
                                                                       self.total + n)})()
  out, slots = generate_all(CFG, PARAMS, prompts, batch_size=2, max_new_tokens=12, pad_id=0,
                            eos_ids=(eos,), refill_rows=refill_rows, chunk=3, progress=bar)
  assert out == expected
  assert bar.total == sum(len(r) for r in expected)
  assert slots >= sum(len(r) for r in expected)


def test_top_k_1_sampling_is_greedy(references):
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  sampling = SamplingConfig(temperature=1.3, top_k=1)
  assert generate(CFG, PARAMS, tokens, mask, max_new_tokens=12, sampling=sampling) == references


def test_sampling_is_seeded_and_varies():
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  sampling = SamplingConfig(temperature=1.0)
  a = generate(CFG, PARAMS, tokens, mask, max_new_tokens=12, sampling=sampling, seed=1)
  b = generate(CFG, PARAMS, tokens, mask, max_new_tokens=12, sampling=sampling, seed=1)
  c = generate(CFG, PARAMS, tokens, mask, max_new_tokens=12, sampling=sampling, seed=2)
  assert a == b and a != c


def test_top_k_top_p_filters_match_definition():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  kept = lambda s: np.isfinite(np.asarray(filtered_logits(logits, s)))[0].tolist()
  assert kept(SamplingConfig(temperature=1.0, top_k=2)) == [False, True, False, True, False]
  # top_p=0.7: 0.4 + 0.3 reaches 0.7 exactly, so the next token (0.15) is out.
  assert kept(SamplingConfig(temperature=1.0, top_p=0.7)) == [False, True, False, True, False]
  assert kept(SamplingConfig(temperature=1.0, top_p=0.71)) == [False, True, False, True, True]
  assert kept(SamplingConfig(temperature=1.0, top_p=0.1)) == [False, True, False, False, False]


def test_sampled_frequencies_follow_the_tempered_distribution():
  logits = jnp.array([[1.0, 0.0, -1.0, 2.0]])
  temperature, n = 0.8, 40_000
  keys = jax.random.split(jax.random.key(0), n)
  draws = jax.vmap(lambda k: sample(logits, k, SamplingConfig(temperature=temperature))[0])(keys)
  freq = np.bincount(np.asarray(draws), minlength=4) / n
  expected = np.asarray(jax.nn.softmax(logits[0] / temperature))
  assert np.abs(freq - expected).max() < 0.01  # ~4 standard errors at n=40k


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0)])
def test_bad_sampling_settings_are_rejected(bad):
  with pytest.raises(UserError):
    SamplingConfig(**bad)


def test_bfloat16_model_tracks_float32():
  cfg16 = CFG.replace(dtype="bfloat16")
  params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
  tokens = jnp.asarray([PROMPTS[1]])
  t = tokens.shape[1]
  run = lambda cfg, p: forward(cfg, p, tokens, jnp.arange(t)[None], KVCache.create(cfg, 1, t))
  out16, out32 = run(cfg16, params16), run(CFG, PARAMS)
  assert out16.cache.k_BxHkvxHxS[0].dtype == jnp.bfloat16
  assert out16.logits_BxTxV.dtype == jnp.float32  # logits are always returned in fp32
  # bf16 keeps ~3 significant digits; this sharp random model amplifies that to ~1% of a logit.
  error = float(jnp.mean(jnp.abs(out16.logits_BxTxV - out32.logits_BxTxV)))
  assert error < 0.03 * float(jnp.mean(jnp.abs(out32.logits_BxTxV)))
