"""Bad configs and inputs stop before any work: one `error:` line, exit 2, nothing written; a loss
that turns NaN stops the job with the last good checkpoint intact.

A misspelt key in a config file is refused by a real process; the job-level refusals run in this
process as one-line UserErrors (test_missing_model_path in test_cli.py checks once that the command
line turns one into the `error:` line and exit code 2)."""

import json
import pathlib
import runpy
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from inprocess import TINY_HELDOUT, run_job
from test_cli import ROOT, assert_one_line_error, assert_refused, run_cli

from draftopd_jax.errors import UserError
from draftopd_jax.io.drafter_checkpoint import save_drafter
from draftopd_jax.jobs import config_check
from draftopd_jax.jobs.new_drafter import drafter_config
from draftopd_jax.models import dflash
from draftopd_jax.models.drafters import DFlashDrafter


@pytest.mark.parametrize("mode", ["generate", "sft", "opd", "eval"])
def test_every_variant_of_the_repository_configs_passes(mode):
  module = runpy.run_path(str(ROOT / "configs" / f"{mode}.py"))
  for variant in module["VARIANTS"]:
    config_check.check(module["get_config"](variant))


def sft_config(**train) -> ml_collections.ConfigDict:
  config = runpy.run_path(str(ROOT / "configs" / "sft.py"))["get_config"]("quick")
  config.train.update(train)
  return config


def test_unknown_keys_and_bad_values_are_refused():
  config = sft_config()
  with pytest.raises(AttributeError, match='"stpes" does not exist'):
    config.train.stpes = 3  # a typo in a config file: the job configs come locked
  for key, value, words in (("steps", 0, "train.steps=0 must be at least 1"),
                            ("batch_size", -2, "train.batch_size=-2"),
                            ("flops_budget", -1.0, "flops_budget=-1.0 must be 0 \\(off\\) or more"),
                            ("final_lr_fraction", 2.0, "final_lr_fraction=2.0 must be between")):
    with pytest.raises(UserError, match=words):
      config_check.check(sft_config(**{key: value}))
  no_sets = runpy.run_path(str(ROOT / "configs" / "eval.py"))["get_config"]("quick")
  no_sets.datasets = ()
  with pytest.raises(UserError, match="datasets=\\(\\) must be at least one of"):
    config_check.check(no_sets)
  no_heldout = runpy.run_path(str(ROOT / "configs" / "opd.py"))["get_config"]("quick")
  no_heldout.heldout.datasets = ()  # SFT may skip held-out tau; Draft-OPD reports it
  with pytest.raises(UserError, match="heldout.datasets=\\(\\) must be at least one of"):
    config_check.check(no_heldout)


def test_unknown_key_in_a_config_file(tmp_path):
  config_file = tmp_path / "my_sft.py"
  config_file.write_text(
      "import runpy\n"
      "def get_config():\n"
      f"  c = runpy.run_path({str(ROOT / 'configs' / 'sft.py')!r})['get_config']('quick')\n"
      "  c.train.stpes = 3\n"
      "  return c\n")
  workdir = tmp_path / "work"
  assert_one_line_error(run_cli(f"--workdir={workdir}", config=str(config_file)),
                        "unknown config key stpes set in the config file", "steps")
  assert not workdir.exists()


def test_block_size_below_two(tmp_path):
  workdir = tmp_path / "work"
  assert_refused("sft.py:quick", workdir, "block_size=1", "at least 2", drafter__block_size=1)
  assert_refused("opd.py:quick", workdir, "block_size=0", warmup__drafter__block_size=0)
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("changes, words", [
    ({"target_layer_ids": (1, 30)}, "target_layer_ids \\[1, 30\\] must be layers of the 30-layer"),
    ({"target_layer_ids": (-1, 4)}, "target_layer_ids \\[-1, 4\\]"),
    ({"mask_token_id": 60000}, "mask_token_id 60000 is not a token id .*49152"),
    ({"kind": "eagle3", "draft_vocab_size": 0}, "draft_vocab_size must be in"),
])
def test_drafter_settings_that_do_not_fit_the_target(smollm, changes, words):
  config = runpy.run_path(str(ROOT / "configs" / "sft.py"))["get_config"]("quick")
  config.drafter.update(changes)
  with pytest.raises(UserError, match=words):
    drafter_config(config.drafter, smollm.cfg)


@pytest.mark.slow
@pytest.mark.parametrize("key, value, words", [
    ("drafter__target_layer_ids", (1, 30), ("config.drafter: target_layer_ids [1, 30]",)),
    ("data__max_prompt_tokens", 2, ("no training prompt fits",)),
    ("data__source", "empty.jsonl", ("holds no prompts",)),
    ("data__source", "malformed.jsonl", ("malformed.jsonl:2", "expected a JSON object")),
    ("drafter__draft_vocab_size", 60000, ("draft_vocab_size=60000 must be in [0, 49152]",)),
    ("validation__corpus", "nowhere", ("no corpus in nowhere",)),
    ("validation__examples", 1, ("validation.examples=1 is less than one batch",)),
])
def test_bad_settings_stop_the_job_before_any_work(tmp_path, key, value, words):
  (tmp_path / "empty.jsonl").write_text("\n")
  (tmp_path / "malformed.jsonl").write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
  if key == "data__source":
    value = str(tmp_path / value)  # one of the two files above
  workdir = tmp_path / "work"
  # With a validation set, which every case but its own passes.
  held_out = str(ROOT / "corpora" / "smollm2-135m-instruct" / "heldout")
  assert_refused("sft.py:quick", workdir, *words, **{"validation__corpus": held_out, key: value})
  assert not workdir.exists()


@pytest.mark.slow
def test_settings_that_would_run_out_of_memory(tmp_path):
  workdir = tmp_path / "work"
  assert_refused("opd.py", workdir, "a Draft-OPD update needs about", "lower rollout.batch_size",
                 rollout__batch_size=4096)
  assert_refused("sft.py", workdir, "an SFT step needs about", train__batch_size=4096)
  assert not workdir.exists()


@pytest.fixture(scope="module")
def drafter_checkpoint(tmp_path_factory, smollm) -> pathlib.Path:
  cfg = dflash.DFlashConfig.for_target(smollm.cfg, num_layers=1, block_size=4, mask_token_id=0)
  directory = tmp_path_factory.mktemp("drafter") / "drafter"
  save_drafter(directory, DFlashDrafter(cfg), dflash.init_params(cfg), smollm.cfg,
               smollm.tokenizer)
  return directory


@pytest.mark.slow
@pytest.mark.parametrize("field, value, words", [
    ("target", {"family": "qwen3", "num_layers": 36, "hidden_size": 4096, "vocab_size": 151936},
     ("made for target",)),
    ("tokenizer", "0123456789abcdef", ("another tokenizer", "0123456789abcdef")),
])
def test_a_drafter_made_for_another_target_or_tokenizer(tmp_path, drafter_checkpoint, field,
                                                       value, words):
  copy = tmp_path / "drafter"
  shutil.copytree(drafter_checkpoint, copy)
  meta = json.loads((copy / "drafter.json").read_text())
  meta[field] = value
  (copy / "drafter.json").write_text(json.dumps(meta))
  assert_refused("eval.py:quick", tmp_path / "eval", *words, drafter__checkpoint=str(copy))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, smollm):
  from draftopd_jax.training import trainer
  from draftopd_jax.training.checkpoints import Checkpointer

  with pytest.raises(UserError, match="^loss became nan .* last good checkpoint is kept"):
    run_job("sft.py:quick", tmp_path, train__learning_rate=1e30, train__steps=12,
            data__num_prompts=4, data__max_prompt_tokens=64, data__seq_len=96,
            train__warmup_steps=1, **TINY_HELDOUT)
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  steps = checkpointer.manager.all_steps()
  assert steps and max(steps) < 12
  d = runpy.run_path(str(ROOT / "configs" / "sft.py"))["get_config"]("quick").drafter
  cfg = dflash.DFlashConfig.for_target(smollm.cfg, num_layers=d.num_layers, block_size=d.block_size,
                                       mask_token_id=d.mask_token_id, num_taps=d.num_taps,
                                       own_final_norm=d.own_final_norm)
  like = trainer.init_state(dflash.init_params(cfg), trainer.make_optimizer(1e-3, 1, 12), 0)
  state, _ = checkpointer.restore(like)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
