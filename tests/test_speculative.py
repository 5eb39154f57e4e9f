"""Speculative decoding on tiny random models (dense and Qwen3-MoE targets; DFlash, EAGLE-3 and
draft-model drafters): lossless greedy and sampling, the trace against a slow re-implementation,
and the DFlash block mask."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import whole_forward
from scipy import stats

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import engine
from draftopd_jax.models import KVCache, ModelConfig, dflash, eagle3, forward, init_params
from draftopd_jax.models.drafters import (DFlashDrafter, DraftModel, Eagle3Drafter, Oracle,
                                          Truncated, draft_model_params)
from draftopd_jax.sampling import SamplingConfig, filtered_logits

CFG = ModelConfig(family="qwen3", vocab_size=53, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
PARAMS = jax.tree.map(lambda x: x * 4, init_params(CFG, seed=3))
MOE_CFG = CFG.replace(family="qwen3_moe", num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=16, norm_topk_prob=True, mlp_only_layers=(2,))
MOE_PARAMS = jax.tree.map(lambda x: x * 4, init_params(MOE_CFG, seed=3))
PROMPTS = [[5, 9, 2, 7], [11, 3, 8, 1, 4, 6, 10, 12, 13], [20]]
K = 4


def make_drafter(kind: str, cfg=CFG, k=K, seed=0, scale=3.0):
  """An untrained drafter; `scale` multiplies the DFlash weights (sharper, more varied output).
  "dflash_vocab": DFlash with a draft vocabulary of every other token; "draft_model": a 2-layer
  Llama with the target's vocabulary."""
  if kind == "draft_model":
    d = ModelConfig(family="llama", vocab_size=cfg.vocab_size, hidden_size=16, num_layers=2,
                    num_heads=2, num_kv_heads=1, head_dim=8, intermediate_size=32)
    params = jax.tree.map(lambda x: x * scale, init_params(d, seed))
    return DraftModel(d, k, cfg.vocab_size), draft_model_params(d, params)
  if kind.startswith("dflash"):
    vocab_ids = tuple(range(0, cfg.vocab_size, 2)) if kind == "dflash_vocab" else ()
    c = dflash.DFlashConfig.for_target(cfg, num_layers=2, block_size=k,
                                       mask_token_id=cfg.vocab_size - 1, vocab_ids=vocab_ids)
    return DFlashDrafter(c), jax.tree.map(lambda x: x * scale, dflash.init_params(c, seed))
  c = eagle3.Eagle3Config.for_target(cfg, block_size=k, draft_vocab_size=cfg.vocab_size - 5)
  d2t = eagle3.build_draft_vocab(np.arange(cfg.vocab_size)[::-1], c.draft_vocab_size)
  return Eagle3Drafter(c), {"model": eagle3.init_params(c, seed), "d2t": jnp.asarray(d2t)}


@pytest.fixture(scope="module")
def autoregressive():
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  return engine.run(CFG, PARAMS, tokens, mask, max_new_tokens=24)


def oracle_params(state, width=256):
  buffer = np.zeros((state.tokens_BxS.shape[0], width), np.int32)
  buffer[:, :state.tokens_BxS.shape[1]] = np.asarray(state.tokens_BxS)
  return jnp.asarray(buffer)


@pytest.mark.parametrize("kind", ["dflash", "dflash_vocab", "eagle3", "draft_model"])
@pytest.mark.parametrize("left", [False, True])
def test_untrained_drafters_are_lossless(autoregressive, kind, left):
  tokens, mask = pad_batch(PROMPTS, pad_id=0, left=left)
  drafter, params = make_drafter(kind)
  state = engine.run(CFG, PARAMS, tokens, mask, drafter=drafter, drafter_params=params,
                     max_new_tokens=24)
  assert engine.new_tokens(state) == engine.new_tokens(autoregressive)
  if kind == "dflash_vocab":  # proposals come from the draft vocabulary only
    proposals = np.asarray(state.trace.proposals_BxNxK1)[np.asarray(state.trace.anchor_pos_BxN) >= 0]
    assert proposals.size and set(proposals.ravel().tolist()) <= set(drafter.cfg.vocab_ids)


def test_oracle_accepts_everything(autoregressive):
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  state = engine.run(CFG, PARAMS, tokens, mask, drafter=Oracle(block_size=K),
                     drafter_params=oracle_params(autoregressive), max_new_tokens=24)
  assert engine.new_tokens(state) == engine.new_tokens(autoregressive)
  steps = np.asarray(state.trace.num_steps_B)
  assert steps.tolist() == [6, 6, 6]  # 23 tokens after the prefill's one: 5 full blocks + 1
  np.testing.assert_array_equal(np.asarray(state.trace.accepted_BxN)[:, :6], K - 1)
  np.testing.assert_array_equal(np.asarray(state.trace.committed_BxN)[:, :6],
                                [[4, 4, 4, 4, 4, 3]] * 3)


@pytest.mark.parametrize("kind", ["dflash_vocab", "eagle3", "draft_model"])
def test_a_truncated_block_verifies_the_drafters_first_proposals(autoregressive, kind):
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  drafter, params = make_drafter(kind)
  run = lambda d: engine.run(CFG, PARAMS, tokens, mask, drafter=d, drafter_params=params,
                             max_new_tokens=24)
  full, short = run(drafter), run(Truncated(drafter, 2))
  assert engine.new_tokens(short) == engine.new_tokens(autoregressive)
  # Both first steps draft from the prefill's anchor: one proposal, the whole block's first.
  np.testing.assert_array_equal(np.asarray(short.trace.proposals_BxNxK1)[:, 0],
                                np.asarray(full.trace.proposals_BxNxK1)[:, 0, :1])


def test_a_truncated_oracle_commits_two_tokens_a_step(autoregressive):
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  state = engine.run(CFG, PARAMS, tokens, mask, drafter=Truncated(Oracle(block_size=K), 2),
                     drafter_params=oracle_params(autoregressive), max_new_tokens=24)
  assert engine.new_tokens(state) == engine.new_tokens(autoregressive)
  assert np.asarray(state.trace.num_steps_B).tolist() == [12, 12, 12]  # 23 tokens, 2 a step
  with pytest.raises(ValueError, match="at most the drafter's 4 slots"):
    Truncated(Oracle(block_size=K), K + 1)


def test_dflash_on_a_moe_target_is_lossless():
  tokens, mask = pad_batch(PROMPTS, pad_id=0, left=True)
  reference = engine.run(MOE_CFG, MOE_PARAMS, tokens, mask, max_new_tokens=24)
  drafter, params = make_drafter("dflash", cfg=MOE_CFG)
  state = engine.run(MOE_CFG, MOE_PARAMS, tokens, mask, drafter=drafter, drafter_params=params,
                     max_new_tokens=24)
  assert engine.new_tokens(state) == engine.new_tokens(reference)


def test_the_target_as_its_own_draft_model_accepts_everything(autoregressive):
  """Self-drafting: every proposal is the target's own greedy token, so tau = K."""
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  state = engine.run(CFG, PARAMS, tokens, mask, drafter=DraftModel(CFG, K, CFG.vocab_size),
                     drafter_params=draft_model_params(CFG, PARAMS), max_new_tokens=24)
  assert engine.new_tokens(state) == engine.new_tokens(autoregressive)
  np.testing.assert_array_equal(np.asarray(state.trace.accepted_BxN)[:, :5], K - 1)


def test_eos_inside_a_block_cuts_the_commit(autoregressive):
  reference = engine.new_tokens(autoregressive)
  eos = reference[0][6]  # lands mid-block for the oracle (blocks commit 4 tokens)
  tokens, mask = pad_batch(PROMPTS, pad_id=0)
  ar = engine.run(CFG, PARAMS, tokens, mask, max_new_tokens=24, eos_ids=(eos,))
  spec = engine.run(CFG, PARAMS, tokens, mask, drafter=Oracle(block_size=K),
                    drafter_params=oracle_params(autoregressive), max_new_tokens=24,
                    eos_ids=(eos,))
  assert engine.new_tokens(spec) == engine.new_tokens(ar)
  assert engine.new_tokens(spec)[0] == reference[0][:reference[0].index(eos) + 1]


# A 6-token vocabulary: an untrained drafter then agrees with the target often enough to
# exercise partial acceptance, and sampled distributions have few cells.
SMALL = CFG.replace(vocab_size=6)
SMALL_PARAMS = jax.tree.map(lambda x: x * 2, init_params(SMALL, seed=5))
SMALL_PROMPTS = [[1, 2, 3, 4, 0], [5, 1]]


_write_context = jax.jit(dflash.write_context, static_argnums=0)
_block_logits = jax.jit(dflash.block_logits, static_argnums=(0, 2))


def slow_dflash_rollout(drafter, params, prompt, steps, width=48):
  """Greedy DFlash speculative decoding with every pass recomputed from scratch."""
  cfg, k = drafter.cfg, drafter.block_size

  def full(toks):
    return whole_forward(SMALL, SMALL_PARAMS, toks, width, cfg.target_layer_ids)

  seq = list(prompt)
  seq.append(int(jnp.argmax(full(seq).logits_BxTxV[0, -1])))
  records = []
  for _ in range(steps):
    anchor = len(seq) - 1
    features = full(seq).hidden_BxTxFxD[:, :anchor]
    cache = _write_context(cfg, params, dflash.ContextCache.create(cfg, 1, 64), features,
                           jnp.arange(anchor)[None])
    logits = _block_logits(cfg, params, SMALL, SMALL_PARAMS, jnp.asarray([[seq[-1]]]),
                           jnp.asarray([[anchor]]), cache)
    proposals = [int(t) for t in jnp.argmax(logits[0, 0, 1:], -1)]
    verify_logits = full(seq + proposals).logits_BxTxV[0, anchor:]
    target = [int(t) for t in jnp.argmax(verify_logits, -1)]
    accepted = 0
    while accepted < k - 1 and proposals[accepted] == target[accepted]:
      accepted += 1
    logprobs = jax.nn.log_softmax(verify_logits[:-1], -1)
    records.append((anchor, accepted, proposals,
                    [float(logprobs[j, t]) for j, t in enumerate(proposals)]))
    seq += proposals[:accepted] + [target[accepted]]
  return records


def test_trace_matches_a_slow_python_rollout():
  # This seed and scale give steps with 0, some and all proposals accepted.
  drafter, params = make_drafter("dflash", cfg=SMALL, k=5, scale=0.9)
  tokens, mask = pad_batch(SMALL_PROMPTS, pad_id=0)
  state = engine.run(SMALL, SMALL_PARAMS, tokens, mask, drafter=drafter, drafter_params=params,
                     max_new_tokens=40)
  t = jax.device_get(state.trace)
  accepted_seen = set()
  for row, prompt in enumerate(SMALL_PROMPTS):
    records = slow_dflash_rollout(drafter, params, prompt, steps=6)
    for n, (anchor, accepted, proposals, logprobs) in enumerate(records):
      assert t.anchor_pos_BxN[row, n] == anchor
      assert t.accepted_BxN[row, n] == accepted
      assert t.proposals_BxNxK1[row, n].tolist() == proposals
      np.testing.assert_allclose(t.proposal_logprob_BxNxK1[row, n], logprobs, atol=1e-4)
      accepted_seen.add(accepted)
  assert len(accepted_seen) >= 3  # bookkeeping exercised beyond all-rejected blocks


# Flatter targets for sampling: many cells with real probability mass.
FLAT = {"dense": (SMALL, init_params(SMALL, seed=5))}
FLAT["moe"] = (MOE_CFG.replace(vocab_size=6), init_params(MOE_CFG.replace(vocab_size=6), seed=5))


def exact_joint(target, prompt, sampling, length):
  """P(first `length` new tokens) of a flat target, by enumerating every prefix."""
  cfg, params = FLAT[target]

  def next_probs(seqs):
    t = len(seqs[0])
    out = forward(cfg, params, jnp.asarray(seqs), jnp.broadcast_to(jnp.arange(t), (len(seqs), t)),
                  KVCache.create(cfg, len(seqs), t))
    return np.asarray(jax.nn.softmax(filtered_logits(out.logits_BxTxV[:, -1], sampling), -1))

  joint = {(): 1.0}
  for _ in range(length):
    prefixes = list(joint)
    probs = next_probs([list(prompt) + list(p) for p in prefixes])
    joint = {p + (v,): joint[p] * probs[i, v] for i, p in enumerate(prefixes)
             for v in range(SMALL.vocab_size)}
  return joint


T1, FILTERED = SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.7, top_k=4, top_p=0.9)


@pytest.mark.parametrize("target,kind,sampling", [
    ("dense", "dflash", T1), ("dense", "dflash", FILTERED), ("moe", "dflash", T1),
    ("dense", "draft_model", T1)], ids=["t1", "t0.7-topk-topp", "moe-t1", "draft-model-t1"])
def test_speculative_sampling_matches_the_target_distribution(target, kind, sampling):
  """Chi-square of the first three new tokens (prefill token + one verify block) against the
  target's exact joint distribution, with a drafter that often disagrees with the target."""
  n = 6000
  prompt = SMALL_PROMPTS[0]
  tokens, mask = pad_batch([prompt] * n, pad_id=0)
  cfg, target_params = FLAT[target]
  drafter, params = make_drafter(kind, cfg=cfg, k=3, seed=1)
  state = engine.run(cfg, target_params, tokens, mask, drafter=drafter, drafter_params=params,
                     max_new_tokens=3, sampling=sampling, seed=11)
  t = jax.device_get(state.trace)
  assert 0 < t.accepted_BxN[:, 0].mean() < 2  # both acceptances and rejections happened
  samples = [tuple(r) for r in engine.new_tokens(state)]
  joint = exact_joint(target, prompt, sampling, 3)
  cells = sorted(joint, key=joint.get, reverse=True)
  expected = np.array([joint[c] * n for c in cells], np.float64)
  observed = np.array([samples.count(c) for c in cells], float)
  assert observed[expected == 0].sum() == 0  # nothing the filters rule out is ever produced
  big, rare = expected >= 5, (expected > 0) & (expected < 5)
  # Pool the rare cells so the chi-square approximation holds.
  pool = lambda x: np.append(x[big], x[rare].sum()) if rare.any() else x[big]
  expected, observed = pool(expected), pool(observed)
  assert observed.sum() == n
  expected *= n / expected.sum()  # float rounding of the enumerated probabilities
  assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_dflash_block_sees_only_context_before_its_anchor():
  drafter, params = make_drafter("dflash")
  cfg = drafter.cfg
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(1, 20, len(cfg.target_layer_ids), CFG.hidden_size)),
                         jnp.float32)
  write = lambda f: dflash.write_context(cfg, params, dflash.ContextCache.create(cfg, 1, 32), f,
                                         jnp.arange(20)[None])
  logits = lambda cache, anchors: dflash.block_logits(cfg, params, CFG, PARAMS, anchors,
                                                      jnp.asarray([[8, 15]]), cache)
  base = logits(write(features), jnp.asarray([[3, 4]]))
  # Context at/after block 0's anchor (8) and block 1's anchor token: block 0 must not change.
  changed = logits(write(features.at[:, 8:].add(1.0)), jnp.asarray([[3, 9]]))
  np.testing.assert_allclose(changed[:, 0], base[:, 0], atol=1e-5)
  assert not np.allclose(changed[:, 1], base[:, 1], atol=1e-3)
  # Context strictly before the anchor does matter (the test above is not vacuous).
  earlier = logits(write(features.at[:, 7].add(1.0)), jnp.asarray([[3, 4]]))
  assert not np.allclose(earlier[:, 0], base[:, 0], atol=1e-3)


@pytest.mark.parametrize("kind", ["autoregressive", "dflash", "eagle3", "draft_model"])
def test_prefill_by_length_decodes_as_a_whole_batch_prefill(kind):
  """Prompts of mixed lengths prefilled two rows at a time, in order of length and each group at
  its own width, give the same greedy tokens and trace as one prefill of the padded batch."""
  prompts = [[5, 9, 2, 7], [11, 3, 8, 1, 4, 6, 10, 12, 13] * 4, [20], [7, 7, 30, 2, 9, 4],
             [1, 2, 3] * 15]
  tokens, mask = pad_batch(prompts, pad_id=0, left=True)
  drafter = {} if kind == "autoregressive" else dict(zip(("drafter", "drafter_params"),
                                                         make_drafter(kind)))
  run = lambda rows: engine.run(CFG, PARAMS, tokens, mask, max_new_tokens=20, prefill_rows=rows,
                                **drafter)
  whole, grouped = run(len(prompts)), run(2)
  assert engine.new_tokens(grouped) == engine.new_tokens(whole)
  for field in ("anchor_pos_BxN", "accepted_BxN", "committed_BxN", "proposals_BxNxK1"):
    np.testing.assert_array_equal(getattr(grouped.trace, field), getattr(whole.trace, field))
