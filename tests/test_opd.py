"""Draft-OPD: anchor plans, losses, replay exactness, gradients, and training on a tiny target."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from draftopd_jax.decoding import engine
from draftopd_jax.evaluation.heldout import heldout_taus
from draftopd_jax.models import ModelConfig, dflash, eagle3, init_params
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.opd import anchor_plan, losses, replay, update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.sampling import SamplingConfig
from draftopd_jax.sft import dflash_loss

CFG = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
TARGET = init_params(CFG, seed=3)
D_CFG = dflash.DFlashConfig.for_target(CFG, num_layers=1, block_size=4, mask_token_id=63)
K = D_CFG.block_size


def hand_trace(rows):
  """A trace from per-sequence lists of (anchor, accepted, committed) steps; N = 4."""
  b, n = len(rows), 4
  trace = engine.Trace.create(b, n, K)
  anchor = np.full((b, n), -1)
  accepted, committed = np.zeros((b, n), int), np.zeros((b, n), int)
  for i, steps in enumerate(rows):
    for j, (a, r, c) in enumerate(steps):
      anchor[i, j], accepted[i, j], committed[i, j] = a, r, c
  proposals = np.arange(b * n * (K - 1)).reshape(b, n, K - 1) % 60
  return trace.replace(anchor_pos_BxN=jnp.asarray(anchor), accepted_BxN=jnp.asarray(accepted),
                       committed_BxN=jnp.asarray(committed),
                       proposals_BxNxK1=jnp.asarray(proposals),
                       proposal_logprob_BxNxK1=-jnp.ones((b, n, K - 1)),
                       num_steps_B=jnp.asarray([len(s) for s in rows]))


# Prompt length 5 for every row: the first block is anchored at the prefill token, position 5.
ROWS = [
    [(5, 3, 4), (9, 0, 1), (10, 1, 2)],  # all accepted (the bonus past slot K-1), none, one
    [(5, 3, 2)],  # EOS at offset 2 inside a fully accepted block
    [(5, 0, 1), (6, 2, 1)],  # none accepted; then the length limit cuts after one token
]


def test_anchor_plan_on_hand_made_traces():
  plan = anchor_plan.from_trace(hand_trace(ROWS), K)
  np.testing.assert_array_equal(plan.anchor_pos_BxN, [[5, 9, 10, 0], [5, 0, 0, 0], [5, 6, 0, 0]])
  np.testing.assert_array_equal(plan.segment_BxN, [[3, 1, 2, 0], [2, 0, 0, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(plan.first_rejected_BxN, [[0, 1, 2, 0], [0, 0, 0, 0],
                                                          [1, 3, 0, 0]])
  expected_rejected = np.zeros((3, 4, K - 1), bool)
  expected_rejected[0, 1, 0:] = True  # offsets 1..3
  expected_rejected[0, 2, 1:] = True  # offsets 2..3
  expected_rejected[2, 0, 0:] = True
  expected_rejected[2, 1, 2:] = True  # the length cut does not un-reject offset 3
  np.testing.assert_array_equal(plan.rejected_BxNxK1, expected_rejected)
  np.testing.assert_array_equal(plan.response_BxNxK1[0, 2], [True, True, False])
  # The paper's partition: the correction token belongs to the rejected stream only.
  paper = anchor_plan.from_trace(hand_trace(ROWS), K, include_correction=False)
  np.testing.assert_array_equal(paper.segment_BxN, [[3, 0, 1, 0], [2, 0, 0, 0], [0, 1, 0, 0]])
  naive = anchor_plan.without_rejected(plan)
  assert not naive.rejected_BxNxK1.any() and (naive.segment_BxN == plan.segment_BxN).all()


def test_random_anchors_keep_the_segment_multiset_inside_the_response():
  plan = anchor_plan.from_trace(hand_trace(ROWS), K)
  prompt_lens, lengths = jnp.asarray([5, 5, 5]), jnp.asarray([5 + 1 + 7, 5 + 1 + 2, 5 + 1 + 2])
  for seed in range(20):
    shuffled = anchor_plan.random_anchors(plan, jax.random.key(seed), prompt_lens, lengths)
    n = plan.segment_BxN.shape[1]
    for row in range(3):
      segments = np.asarray(shuffled.segment_BxN[row, :n])
      assert sorted(segments[segments > 0]) == sorted(np.asarray(plan.segment_BxN[row])[
          np.asarray(plan.segment_BxN[row]) > 0])
      covered = [a + j for a, s in zip(np.asarray(shuffled.anchor_pos_BxN[row, :n]), segments)
                 for j in range(1, s + 1)]
      assert len(covered) == len(set(covered)) and all(6 <= c < lengths[row] for c in covered)
    # The rejected stream stays at the true anchors, in the second half.
    np.testing.assert_array_equal(shuffled.anchor_pos_BxN[:, n:], plan.anchor_pos_BxN)
    np.testing.assert_array_equal(shuffled.rejected_BxNxK1[:, n:], plan.rejected_BxNxK1)
    assert not shuffled.rejected_BxNxK1[:, :n].any() and not shuffled.segment_BxN[:, n:].any()


def test_sampled_estimators_on_hand_computed_values():
  p, q = 0.5, 0.25
  expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
  got = losses.bernoulli_forward_kl(jnp.log(p), jnp.log(q))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # k3 at d = log p - log q = 1: e - 2; clamps: log-probs below -10 are raised to -10.
  np.testing.assert_allclose(losses.k3_reverse_kl(jnp.float32(-1.0), jnp.float32(-2.0)),
                             math.e - 2, rtol=1e-6)
  np.testing.assert_allclose(losses.bernoulli_forward_kl(jnp.float32(-30.0), jnp.float32(-40.0)),
                             losses.bernoulli_forward_kl(jnp.float32(-10.0), jnp.float32(-10.0)))
  assert float(losses.k3_reverse_kl(jnp.float32(25.0), jnp.float32(0.0))) == 10.0


def test_full_kls_on_hand_computed_values():
  p, q = np.array([0.7, 0.2, 0.1]), np.array([0.4, 0.4, 0.2])
  lp, lq = jnp.log(p), jnp.log(q)
  forward = losses.token_loss("forward", "full", None, None, lp, lq)
  reverse = losses.token_loss("reverse", "full", None, None, lp, lq)
  np.testing.assert_allclose(forward, np.sum(p * np.log(p / q)), rtol=1e-5)
  np.testing.assert_allclose(reverse, np.sum(q * np.log(q / p)), rtol=1e-5)


def test_aggregations_on_hand_computed_values():
  args = (jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0]), jnp.array([4.0, 9.0]),
          jnp.array([0.5, 0.0]))
  pooled = losses.combine(*args, aggregation="pooled", response_lambda=1, rejected_lambda=1)
  means = losses.combine(*args, aggregation="mean_of_means", response_lambda=1,
                             rejected_lambda=1)
  np.testing.assert_allclose(pooled, (3 + 2) / (2 + 0.5))
  np.testing.assert_allclose(means, (1.5 + 4) / 2)
  weighted = losses.combine(*args, aggregation="mean_of_means", response_lambda=1,
                                rejected_lambda=3)
  np.testing.assert_allclose(weighted, (1.5 + 3 * 4) / 4)
  no_rejected = losses.combine(args[0], args[1], args[2], jnp.zeros(2),
                                   aggregation="mean_of_means", response_lambda=1,
                                   rejected_lambda=1)
  np.testing.assert_allclose(no_rejected, 1.5)
  np.testing.assert_allclose(losses.rejected_slot_weights(4, 0.8, decay=True), [1, 0.8, 0.64])
  np.testing.assert_allclose(losses.rejected_slot_weights(4, 0.8, decay=False), [1, 1, 1])


def test_suffix_proposals_committed_anyway_on_a_hand_made_block():
  """One block, K = 5: proposal 1 accepted, 2 rejected (first rejection), 3 and 4 the suffix;
  proposal 4 is the token the target committed at its position all the same."""
  zeros = jnp.zeros((1, 1, 4))
  plan = anchor_plan.AnchorPlan(
      anchor_pos_BxN=jnp.array([[3]]), segment_BxN=jnp.array([[2]]),
      rejected_BxNxK1=jnp.array([[[False, True, True, True]]]),
      proposals_BxNxK1=jnp.array([[[7, 8, 9, 5]]]), rejected_logprob_BxNxK1=zeros,
      first_rejected_BxN=jnp.array([[2]]), drafted_BxN=jnp.array([[True]]))
  committed = jnp.array([[[7, 4, 6, 5]]])
  response = plan.response_BxNxK1
  metrics = losses.diagnostics(plan, response, zeros, zeros, committed == committed,
                               zeros == 0, plan.proposals_BxNxK1 == committed)
  np.testing.assert_allclose(metrics["suffix_proposal_committed"], 0.5)
  np.testing.assert_allclose(metrics["share_rejected_suffix"], 0.5)  # 2 of 4 replayed tokens


def rollout(drafter_params, prompts, mask, max_new_tokens=12):
  drafter = DFlashDrafter(D_CFG)
  state = engine.prefill(CFG, TARGET, drafter, drafter_params, prompts, mask, jax.random.key(0),
                         max_new_tokens=max_new_tokens, sampling=SamplingConfig(),
                         eos_ids=(), record_teacher=True, record_verify_logprobs=True)
  return state, drafter


PROMPTS = jnp.asarray(np.random.default_rng(0).integers(1, 60, (3, 7)), jnp.int32)
MASK = jnp.asarray(np.arange(7)[None] >= np.array([[0], [2], [4]]))  # left-padded, mixed lengths


def test_replayed_logits_equal_the_rollout_logits():
  params = dflash.init_params(D_CFG, seed=1)
  state, drafter = rollout(params, PROMPTS, MASK)
  seen = {}  # (row, anchor) -> the drafter's logits for slots 1..K-1 during the rollout
  while not bool(state.done_B.all()):
    anchor_B = state.lengths_B - 1
    anchor_tokens = jnp.take_along_axis(state.tokens_BxS, anchor_B[:, None], axis=1)
    logits = dflash.block_logits(D_CFG, params, CFG, TARGET, anchor_tokens, anchor_B[:, None],
                                 state.drafter_state)[:, 0, 1:]
    for row in np.flatnonzero(~np.asarray(state.done_B)):
      seen[row, int(anchor_B[row])] = jax.nn.log_softmax(logits[row])
    state = engine.decode(CFG, TARGET, drafter, params, state, state.step + 1, max_new_tokens=12,
                          sampling=SamplingConfig(), eos_ids=())
  plan = anchor_plan.from_trace(state.trace, K)
  replayed = replay.dflash_logprobs(D_CFG, params, CFG, TARGET, state.tokens_BxS,
                                        replay.from_rollout(state).features_BxSxFxD, plan)
  used = np.asarray(state.trace.num_steps_B)
  assert len(seen) == used.sum()
  for row in range(3):
    for n in range(used[row]):
      anchor = int(plan.anchor_pos_BxN[row, n])
      np.testing.assert_allclose(replayed[row, n], seen[row, anchor], atol=2e-4)
      np.testing.assert_array_equal(jnp.argmax(replayed[row, n], -1),
                                    state.trace.proposals_BxNxK1[row, n])


def test_the_rollouts_records_are_the_teacher_of_a_second_target_pass():
  """Features at every verified position, and the committed tokens' log-probs and full rows at
  every response offset, equal one target forward over the finished sequences."""
  params = dflash.init_params(D_CFG, seed=1)
  state, drafter = rollout(params, PROMPTS, MASK)
  state = engine.decode(CFG, TARGET, drafter, params, state, jnp.int32(12), max_new_tokens=12,
                        sampling=SamplingConfig(), eos_ids=())
  plan = anchor_plan.from_trace(state.trace, K)
  recorded = replay.from_rollout(state)
  second = replay.target_pass(D_CFG.target_layer_ids, CFG, TARGET, state.tokens_BxS,
                                  plan.anchor_pos_BxN, K, full_rows=True)
  for row, length in enumerate(np.asarray(state.lengths_B)):
    np.testing.assert_allclose(recorded.features_BxSxFxD[row, :length - 1],
                               second.features_BxSxFxD[row, :length - 1], atol=1e-4)
  response = np.asarray(plan.response_BxNxK1)
  assert response.sum() > 10 and (~response & np.asarray(plan.drafted_BxN)[..., None]).sum() > 10
  np.testing.assert_allclose(np.asarray(recorded.response_logprob_BxNxK1)[response],
                             np.asarray(second.response_logprob_BxNxK1)[response], atol=1e-4)
  np.testing.assert_allclose(np.asarray(recorded.rows_BxNxK1xV)[response],
                             np.asarray(second.rows_BxNxK1xV)[response], atol=1e-4)


E_CFG = eagle3.Eagle3Config.for_target(CFG, block_size=4, draft_vocab_size=48)


def eagle3_params(seed=1):
  d2t = eagle3.build_draft_vocab(np.random.default_rng(seed).integers(0, 100, 64), 48)
  return {"model": eagle3.init_params(E_CFG, seed), "d2t": jnp.asarray(d2t)}


_eagle3_step = jax.jit(eagle3.step, static_argnums=(0, 2))  # one compilation, not op by op


def test_eagle3_replay_feeds_the_drafters_own_proposals():
  """Replayed EAGLE-3 log-probs at each recorded anchor equal the chain the drafter ran in the
  rollout (observe's first proposal, then its own proposals fed back)."""
  params = eagle3_params()
  drafter = Eagle3Drafter(E_CFG)
  statics = dict(max_new_tokens=12, sampling=SamplingConfig(), eos_ids=())
  state = engine.prefill(CFG, TARGET, drafter, params, PROMPTS, MASK, jax.random.key(0),
                         record_teacher=True, **statics)
  seen = {}
  while not bool(state.done_B.all()):
    anchor_B = state.lengths_B - 1
    # The rollout's chain, step by step: d1 from observe (kept in the drafter state), then each
    # proposal fed back at the next position, as Eagle3Drafter.propose does.
    proposals, _ = drafter.propose(params, (CFG, TARGET), state.drafter_state, state.tokens_BxS,
                                   anchor_B)
    token, hidden, cache = state.drafter_state["first_B"], state.drafter_state["hidden_BxD"], \
        state.drafter_state["cache"]
    chain = []
    for offset in range(E_CFG.block_size - 2):
      hidden3, logits, cache = _eagle3_step(E_CFG, params["model"], CFG, TARGET, token[:, None],
                                            hidden[:, None], (anchor_B + offset)[:, None], cache)
      chain.append(jax.nn.log_softmax(logits[:, 0]))
      token, hidden = params["d2t"][jnp.argmax(logits[:, 0], -1)], hidden3[:, 0]
    for row in np.flatnonzero(~np.asarray(state.done_B)):
      seen[row, int(anchor_B[row])] = (np.asarray(proposals[row]), [c[row] for c in chain])
    state = engine.decode(CFG, TARGET, drafter, params, state, state.step + 1, **statics)
  plan = anchor_plan.from_trace(state.trace, E_CFG.block_size)
  replayed = replay.eagle3_logprobs(E_CFG, params, CFG, TARGET, state.tokens_BxS,
                                        replay.from_rollout(state).features_BxSxFxD, plan)
  used = np.asarray(state.trace.num_steps_B)
  assert len(seen) == used.sum()
  for row in range(3):
    for n in range(used[row]):
      proposals, chain = seen[row, int(plan.anchor_pos_BxN[row, n])]
      np.testing.assert_array_equal(params["d2t"][jnp.argmax(replayed[row, n], -1)], proposals)
      for offset, logprobs in enumerate(chain, start=1):  # offsets 2..K-1
        np.testing.assert_allclose(replayed[row, n, offset], logprobs, atol=2e-4)


def test_eagle3_opd_step_trains_the_model_weights_only():
  from draftopd_jax.parallel import sharding
  from draftopd_jax.training import trainer

  params = eagle3_params()
  optimizer = trainer.make_optimizer(1e-3, 1, 10)
  fn = update_step.opd_step_fn(drafter=Eagle3Drafter(E_CFG), target_cfg=CFG, optimizer=optimizer,
                            rollout=update_step.RolloutOptions(max_new_tokens=8),
                            loss=LossOptions(estimator="full"), d2t_Vd=params["d2t"])
  step, state, target = trainer.shard_step(
      fn, sharding.make_mesh(), trainer.init_state(params["model"], optimizer, 0), TARGET)
  before = jax.tree.map(np.array, state.params)
  state, metrics = step(state, target, PROMPTS, MASK)
  np.testing.assert_allclose(metrics["replay_agreement"], 1.0)  # the first step's lr is 0
  state, metrics = step(state, target, PROMPTS, MASK)
  assert np.isfinite(float(metrics["loss"])) and int(metrics["rejected_tokens"]) > 0
  changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
  assert all(jax.tree.leaves(changed))


def step_loss(options=LossOptions(), rollout_options=None, params=None, target=TARGET):
  rollout_options = rollout_options or update_step.RolloutOptions(max_new_tokens=12)
  return update_step.rollout_loss(params or dflash.init_params(D_CFG, seed=1), jax.random.key(0),
                               target, PROMPTS, MASK, drafter=DFlashDrafter(D_CFG), d2t_Vd=None,
                               target_cfg=CFG, rollout=rollout_options, loss=options)


def test_switches_change_exactly_what_they_name():
  _, base = step_loss()
  assert base["rejected_tokens"] > 0 and base["response_tokens"] > 0
  _, all_forward = step_loss(LossOptions(rejected_direction="forward"))
  _, all_reverse = step_loss(LossOptions(response_direction="reverse"))
  no_decay_loss, no_decay = step_loss(LossOptions(decay=False))
  same = lambda a, b, key: np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
  differ = lambda a, b, key: abs(float(a[key]) - float(b[key])) > 1e-4
  same(base, all_forward, "response_loss")
  assert differ(base, all_forward, "rejected_loss")
  same(base, all_reverse, "rejected_loss")
  assert differ(base, all_reverse, "response_loss")
  same(base, no_decay, "response_loss")
  same(base, no_decay, "rejected_loss")  # unweighted stream means; only the weights change
  assert differ(base, no_decay, "loss")
  _, first_only = step_loss(LossOptions(first_rejected_only=True))
  same(base, first_only, "response_loss")
  assert differ(base, first_only, "loss")
  _, hard = step_loss(LossOptions(response_loss="ce"))
  same(base, hard, "rejected_loss")
  assert differ(base, hard, "response_loss")
  _, naive = step_loss(rollout_options=update_step.RolloutOptions(max_new_tokens=12,
                                                               rejected_stream=False))
  assert int(naive["rejected_tokens"]) == 0 and naive["response_tokens"] == base["response_tokens"]
  _, paper = step_loss(rollout_options=update_step.RolloutOptions(max_new_tokens=12,
                                                               include_correction=False))
  assert int(paper["response_tokens"]) < int(base["response_tokens"])


def test_gradients_reach_the_drafter_only():
  params = dflash.init_params(D_CFG, seed=1)
  for options in (LossOptions(), LossOptions(estimator="full")):
    grads = jax.grad(lambda d, t: step_loss(options, params=d, target=t)[0], argnums=(0, 1))(
        params, TARGET)
    drafter_norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[0])]
    assert all(n > 0 for n in drafter_norms)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads[1]))


@pytest.mark.parametrize("estimator, vocab_ids", [("sampled", ()), ("full", ()),
                                                  ("full", tuple(range(1, 64, 3)))],
                         ids=["sampled", "full", "full-draft-vocabulary"])
def test_full_and_random_variants_run_in_the_step(estimator, vocab_ids):
  """Replayed proposals agree with the rollout's, with a DFlash draft vocabulary too (its ids
  mapped to the target's and back)."""
  from draftopd_jax.parallel import sharding
  from draftopd_jax.training import trainer

  cfg = dataclasses.replace(D_CFG, vocab_ids=vocab_ids)
  optimizer = trainer.make_optimizer(1e-3, 1, 10)
  fn = update_step.opd_step_fn(
      drafter=DFlashDrafter(cfg), target_cfg=CFG, optimizer=optimizer,
      rollout=update_step.RolloutOptions(max_new_tokens=8, anchors="random", rollouts_per_update=2),
      loss=dataclasses.replace(LossOptions(), estimator=estimator))
  step, state, target = trainer.shard_step(
      fn, sharding.make_mesh(), trainer.init_state(dflash.init_params(cfg), optimizer, 0), TARGET)
  prompts = jnp.concatenate([PROMPTS, PROMPTS[:1]])
  mask = jnp.concatenate([MASK, MASK[:1]])
  state, metrics = step(state, target, prompts, mask)
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert int(metrics["first_rejection_histogram"].sum()) > 0
  np.testing.assert_allclose(metrics["replay_agreement"], 1.0)


@pytest.mark.slow
def test_opd_raises_heldout_tau_of_an_sft_drafter(tmp_path):
  from draftopd_jax.decoding.padding import pad_batch
  from draftopd_jax.parallel import sharding
  from draftopd_jax.sft import data
  from draftopd_jax.training import trainer

  target_cfg = dataclasses.replace(CFG, vocab_size=53)
  target = jax.tree.map(lambda x: x * 1.5, init_params(target_cfg, seed=3))  # peakier outputs
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, 50, rng.integers(3, 10)).tolist() for _ in range(128)]
  generate = lambda batch: engine.new_tokens(engine.run(target_cfg, target, *pad_batch(batch, 0),
                                                        max_new_tokens=24))
  examples = data.regenerate(prompts, tmp_path / "r.jsonl", generate, 64, show_progress=False)
  train, heldout = examples[:64], examples[64:]
  cfg = dflash.DFlashConfig.for_target(target_cfg, num_layers=2, block_size=4, mask_token_id=52)
  drafter, mesh = DFlashDrafter(cfg), sharding.make_mesh()
  heldout_prompts = pad_batch([list(e.prompt_ids) for e in heldout], 0)
  tau = lambda params: np.mean(heldout_taus(target_cfg, target, drafter, params, *heldout_prompts,
                                                   max_new_tokens=24, eos_ids=()))

  sft_optimizer = trainer.make_optimizer(3e-3, warmup_steps=5, total_steps=200)
  sft_step, state, placed = trainer.shard_step(
      dflash_loss.step_fn(cfg=cfg, target_cfg=target_cfg, optimizer=sft_optimizer,
                             num_anchors=8, gamma=0.0, distill=False),
      mesh, trainer.init_state(dflash.init_params(cfg), sft_optimizer, seed=0), target)
  for step in range(100):
    state, _ = sft_step(state, placed, *data.to_batch(
        [train[(step * 16 + i) % 64] for i in range(16)], 40, 0))
  tau_sft = tau(state.params)

  optimizer = trainer.make_optimizer(3e-3, warmup_steps=2, total_steps=40)
  step_fn = update_step.opd_step_fn(drafter=drafter, target_cfg=target_cfg, optimizer=optimizer,
                                 rollout=update_step.RolloutOptions(max_new_tokens=24),
                                 loss=LossOptions())
  opd_train_step, opd_state, placed = trainer.shard_step(
      step_fn, mesh, trainer.init_state(state.params, optimizer, seed=0), target)
  for step in range(30):
    opd_state, metrics = opd_train_step(opd_state, placed, *pad_batch(
        [list(train[(step * 16 + i) % 64].prompt_ids) for i in range(16)], 0))
  assert tau(opd_state.params) > tau_sft + 0.03, (tau_sft, tau(opd_state.params))
