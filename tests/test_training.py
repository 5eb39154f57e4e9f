"""SFT building blocks: the regeneration cache, batching, anchors, and a DFlash run that learns."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import engine
from draftopd_jax.evaluation.heldout import heldout_taus
from draftopd_jax.models import ModelConfig, dflash, init_params, transformer
from draftopd_jax.models.drafters import DFlashDrafter
from draftopd_jax.parallel import sharding
from draftopd_jax.sft import data, dflash_loss
from draftopd_jax.sft.validation import Validation
from draftopd_jax.training import loop, trainer

CFG = ModelConfig(family="qwen3", vocab_size=53, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
PARAMS = jax.tree.map(lambda x: x * 1.5, init_params(CFG, seed=3))


def fake_generate(calls):
  def generate_batch(prompts):
    calls.append(len(prompts))
    return [[sum(p) % 50, len(p)] for p in prompts]
  return generate_batch


def test_interrupted_regeneration_resumes_without_duplicates_or_gaps(tmp_path):
  prompts = [[i, i + 1] for i in range(10)]
  path = tmp_path / "responses.jsonl"
  calls = []

  def crash_on_third_batch(batch):
    if len(calls) == 2:
      raise KeyboardInterrupt  # the process dies mid-run
    return fake_generate(calls)(batch)

  with pytest.raises(KeyboardInterrupt):
    data.regenerate(prompts, path, crash_on_third_batch, batch_size=3, show_progress=False)
  assert len(path.read_text().splitlines()) == 6
  with open(path, "a") as f:
    f.write('{"index": 7, "prompt_ids": [7')  # a line torn by the crash
  calls.clear()
  examples = data.regenerate(prompts, path, fake_generate(calls), batch_size=3,
                             show_progress=False)
  assert calls == [3, 1]  # only the 4 missing prompts were generated
  assert [e.prompt_ids for e in examples] == [tuple(p) for p in prompts]
  assert [e.response_ids for e in examples] == [(sum(p) % 50, 2) for p in prompts]
  indices = [json.loads(line)["index"] for line in path.read_text().splitlines()]
  assert sorted(indices) == list(range(10))
  calls.clear()
  data.regenerate(prompts, path, fake_generate(calls), batch_size=3, show_progress=False)
  assert calls == []  # a finished cache is reused as it is


def test_regeneration_progress_shows_tokens_per_second(tmp_path, capsys):
  data.regenerate([[1, 2], [3, 4], [5, 6]], tmp_path / "r.jsonl", fake_generate([]), batch_size=2)
  bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
  assert "3/3" in bar and float(bar.split(", ")[-1].split(" tok/s")[0]) > 0, bar


def test_a_resumed_run_keeps_the_settings_it_started_with(tmp_path):
  import ml_collections

  from draftopd_jax.errors import UserError

  config = ml_collections.ConfigDict({
      "train": {"steps": 10, "learning_rate": 1e-3}, "data": {"feature_cache_dir": "a"},
      "heldout": {"num_prompts": 8}, "mesh": {"data": -1}, "drafter": {"layer_ids": (1, 2)},
      "warmup": {"train": {"steps": 5, "learning_rate": 0.5}, "heldout": {"num_prompts": 8}}})
  loop.record_config(config, tmp_path, resuming=False)
  # Longer, with its cache moved, fewer held-out prompts, another mesh and a validation set (here
  # or in its warm-up job's config): the same run.
  config.train.steps, config.data.feature_cache_dir = 20, "b"
  config.heldout.num_prompts, config.mesh.data = 4, 2
  config.warmup.heldout.num_prompts, config.warmup.train.steps = 4, 6
  config.validation = {"corpus": "c"}
  loop.record_config(config, tmp_path, resuming=True)
  config.train.learning_rate, config.drafter.layer_ids = 3e-3, (1, 3)
  with pytest.raises(UserError, match=r"other settings \(drafter.layer_ids \[1, 2\] -> \[1, 3\]; "
                                      r"train.learning_rate 0.001 -> 0.003\): resume it with"):
    loop.record_config(config, tmp_path, resuming=True)
  config.train.learning_rate, config.drafter.layer_ids = 1e-3, (1, 2)
  config.warmup.train.learning_rate = 1.0
  with pytest.raises(UserError, match=r"\(warmup.train.learning_rate 0.5 -> 1.0\)"):
    loop.record_config(config, tmp_path, resuming=True)
  saved = json.loads((tmp_path / "run_config.json").read_text())
  assert saved["train"] == {"steps": 20, "learning_rate": 1e-3}  # the refused run left it
  loop.record_config(config, tmp_path, resuming=False)  # no checkpoint yet: a new start
  assert json.loads((tmp_path / "run_config.json").read_text())["warmup"]["train"] == {
      "steps": 6, "learning_rate": 1.0}
  # The stream's size: a corpus grown under a resumed run would reorder its data. A run recorded
  # without one (from before it was kept) resumes.
  loop.record_config(config, tmp_path, resuming=True, stream_size=100)
  loop.record_config(config, tmp_path, resuming=False, stream_size=100)
  with pytest.raises(UserError, match=r"\(stream_size 100 -> 120\)"):
    loop.record_config(config, tmp_path, resuming=True, stream_size=120)


def test_batches_mask_response_tokens_only():
  examples = [data.Example((1, 2, 3), (4, 5)), data.Example((6,), (7, 8, 9, 10, 11, 12))]
  tokens, mask = data.to_batch(examples, seq_len=5, pad_id=0)
  assert tokens.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
  assert mask.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]


def test_anchors_are_distinct_positions_before_response_tokens():
  mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]], bool)
  anchors, valid = dflash_loss.sample_anchors(jax.random.key(0), mask, num_anchors=4)
  anchors, valid = np.asarray(anchors), np.asarray(valid)
  assert sorted(anchors[0][valid[0]].tolist()) == [2, 3, 4]  # 3 candidates, 4 asked
  assert anchors[1][valid[1]].tolist() == [0] and valid[1].sum() == 1
  np.testing.assert_allclose(dflash_loss.slot_weights(4, 2.0), np.exp(-np.arange(3) / 2.0))


def test_dflash_sft_lowers_loss_and_raises_heldout_tau(tmp_path):
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 50, rng.integers(3, 10)).tolist() for _ in range(80)]
  generate = lambda batch: engine.new_tokens(
      engine.run(CFG, PARAMS, *pad_batch(batch, 0), max_new_tokens=24))
  examples = data.regenerate(prompts, tmp_path / "r.jsonl", generate, batch_size=40,
                             show_progress=False)
  train, heldout = examples[:64], examples[64:]
  cfg = dflash.DFlashConfig.for_target(CFG, num_layers=2, block_size=4, mask_token_id=52)
  optimizer = trainer.make_optimizer(3e-3, warmup_steps=5, total_steps=200)
  state = trainer.init_state(dflash.init_params(cfg), optimizer, seed=0)
  step_fn = dflash_loss.step_fn(cfg=cfg, target_cfg=CFG, optimizer=optimizer, num_anchors=8,
                                   gamma=0.0, distill=False)
  train_step, state, target = trainer.shard_step(step_fn, sharding.make_mesh(), state, PARAMS)
  heldout_prompts = pad_batch([list(e.prompt_ids) for e in heldout], 0)
  tau = lambda params: np.mean(heldout_taus(CFG, PARAMS, DFlashDrafter(cfg), params,
                                                   *heldout_prompts, max_new_tokens=24, eos_ids=()))
  tau_before = tau(state.params)
  loss = dflash_loss.batch_loss(cfg=cfg, target_cfg=CFG, num_anchors=8, gamma=0.0, distill=False)
  validation = Validation(loss, heldout, seq_len=40, batch_size=6, pad_id=0)  # 2 whole batches
  before = validation(state.params, target)
  assert validation(state.params, target) == before  # the same anchors every time
  losses = []
  for step in range(200):
    tokens, mask = data.to_batch([train[(step * 16 + i) % 64] for i in range(16)], 40, 0)
    state, m = train_step(state, target, tokens, mask)
    losses.append(float(m["loss"]))
  assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
  assert tau(state.params) > tau_before + 0.08
  after = validation(state.params, target)
  assert after["validation_loss"] < 0.8 * before["validation_loss"]
  assert len(after["validation_accuracy_by_slot"]) == 3
  assert all(a > b + 0.08 for a, b in zip(after["validation_accuracy_by_slot"],
                                          before["validation_accuracy_by_slot"]))


def test_distillation_loss_is_soft_cross_entropy_to_the_target():
  """With KL targets, a drafter whose output equals the target's next-token distribution would
  reach the target's entropy; here: finite, positive, and different from hard CE."""
  cfg = dflash.DFlashConfig.for_target(CFG, num_layers=1, block_size=3, mask_token_id=52)
  params = dflash.init_params(cfg)
  tokens, mask = data.to_batch([data.Example((1, 2, 3), (4, 5, 6, 7))] * 2, 8, 0)
  kwargs = dict(num_anchors=3, gamma=2.0)
  args = (params, cfg, CFG, PARAMS, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(1))
  soft, _ = dflash_loss.loss_fn(*args, distill=True, **kwargs)
  hard, metrics = dflash_loss.loss_fn(*args, distill=False, **kwargs)
  assert np.isfinite(soft) and soft > 0 and abs(float(soft) - float(hard)) > 1e-3
  assert int(metrics["tokens"]) > 0


def test_init_from_loads_a_saved_drafter(tmp_path):
  from types import SimpleNamespace

  import ml_collections

  from draftopd_jax.io.drafter_checkpoint import save_drafter
  from draftopd_jax.jobs.sft import load_init_drafter

  cfg = dflash.DFlashConfig.for_target(CFG, num_layers=1, block_size=3, mask_token_id=52)
  params = dflash.init_params(cfg, seed=7)
  save_drafter(tmp_path / "drafter", DFlashDrafter(cfg), params, CFG)
  config = ml_collections.ConfigDict({"drafter": {"kind": "dflash",
                                                  "init_from": str(tmp_path / "drafter")},
                                      "train": {"seed": 0}})
  drafter, loaded = load_init_drafter(config, SimpleNamespace(cfg=CFG, tokenizer=None))
  assert drafter == DFlashDrafter(cfg)
  jax.tree.map(np.testing.assert_array_equal, params, loaded)


def test_flops_budgets_and_flops_spaced_evaluations():
  assert trainer.budget_steps(1000, 0.0, 5.0) == 1000  # no budget
  assert trainer.budget_steps(1000, 50.0, 5.0) == 10  # exactly reached at step 10
  assert trainer.budget_steps(1000, 51.0, 5.0) == 11  # the first step that reaches it
  assert trainer.budget_steps(7, 51.0, 5.0) == 7  # steps stay a cap
  # Runs of different cost per step are evaluated at the same FLOPs: a run of 3 per step and
  # one of 7 per step both evaluate at the first step past each multiple of 10.
  for cost in (3.0, 7.0):
    evals = [step for step in range(1, 20) if trainer.crossed((step - 1) * cost, step * cost, 10)]
    assert [int(step * cost // 10) for step in evals] == list(range(1, len(evals) + 1))
  assert not trainer.crossed(0.0, 100.0, 0.0)  # off


def test_a_final_lr_fraction_of_one_is_a_constant_rate_after_warmup():

  params = {"w": jnp.ones(3)}
  optimizer = trainer.make_optimizer(1e-2, 2, 100, weight_decay=0.0, final_lr_fraction=1.0)
  state = optimizer.init(params)
  sizes = []
  for _ in range(6):  # with constant gradients, Adam's step is the rate
    updates, state = optimizer.update({"w": jnp.ones(3)}, state, params)
    sizes.append(float(-updates["w"][0]))
  np.testing.assert_allclose(sizes[2:], 1e-2, rtol=1e-4)
  assert sizes[0] == 0.0 and 0 < sizes[1] < 1e-2


@pytest.mark.parametrize("distill", [False, True])
def test_a_draft_vocabulary_restricts_the_softmax_and_skips_labels_outside(distill):
  """Over the whole vocabulary a drafter with a draft vocabulary has the plain loss; over part of
  it, the plain loss of logits renormalised over that part (student and teacher alike), with
  labels outside it dropped. Its proposals are target ids inside the draft vocabulary."""
  tokens, mask = data.to_batch([data.Example((1, 2, 3), (4, 5, 6, 7, 8, 9))] * 2, 10, 0)

  def loss(vocab_ids):
    cfg = dflash.DFlashConfig.for_target(CFG, num_layers=1, block_size=3, mask_token_id=52,
                                         vocab_ids=vocab_ids)
    return dflash_loss.loss_fn(dflash.init_params(cfg), cfg, CFG, PARAMS, jnp.asarray(tokens),
                               jnp.asarray(mask), jax.random.key(1), num_anchors=4, gamma=2.0,
                               distill=distill)

  plain, plain_metrics = loss(())
  whole, whole_metrics = loss(tuple(range(CFG.vocab_size)))
  np.testing.assert_allclose(whole, plain, rtol=1e-6)
  np.testing.assert_array_equal(whole_metrics["accuracy_by_slot"],
                                plain_metrics["accuracy_by_slot"])
  part = (0, 2, 4, 5, 6, 7, 8, 9, 11, 30, 52)
  restricted, metrics = loss(part)
  assert int(metrics["tokens"]) == int(plain_metrics["tokens"])
  assert float(restricted) < float(plain)  # fewer tokens share the probability
  without_9 = tuple(i for i in part if i != 9)
  assert int(loss(without_9)[1]["tokens"]) < int(metrics["tokens"])


def test_lm_head_over_part_of_the_vocabulary_is_a_slice_of_the_whole():
  x = jax.random.normal(jax.random.key(0), (2, 3, CFG.hidden_size))
  ids = jnp.asarray([0, 7, 52, 3])
  for cfg in (CFG, CFG.replace(tie_embeddings=True)):
    head = transformer.bind(cfg, init_params(cfg, seed=1))
    np.testing.assert_allclose(head.lm_head_logits(x, ids), head.lm_head_logits(x)[..., ids],
                               rtol=1e-5, atol=1e-5)


def test_training_curves_draw_the_validation_loss_beside_the_training_loss(tmp_path):
  from draftopd_jax.training import plots

  records = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 11)]
  records += [{"step": s, "heldout_tau": 1.0 + s / 100, "train_flops": s * 1e12,
               "validation_loss": 5.2 - s / 20} for s in (0, 5, 10)]
  out = tmp_path / "curves.png"
  plots.training_curves({"run": records}, out)
  assert out.read_bytes().startswith(b"\x89PNG")
