"""Bad configs and inputs stop before any work: one `error:` line, exit 2, nothing written; a loss
that turns NaN stops the job with the last good checkpoint intact."""

import json
import pathlib
import runpy
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from inprocess import run_job
from test_cli import ROOT, assert_one_line_error, run_cli

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
  assert_one_line_error(run_cli("--config.drafter.block_size=1", f"--workdir={workdir}",
                                config="configs/sft.py:quick"), "block_size=1", "at least 2")
  assert_one_line_error(run_cli("--config.warmup.drafter.block_size=0", f"--workdir={workdir}",
                                config="configs/opd.py:quick"), "block_size=0")
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
@pytest.mark.parametrize("override, words", [
    ("--config.drafter.target_layer_ids=(1,30)", ("config.drafter: target_layer_ids [1, 30]",)),
    ("--config.data.max_prompt_tokens=2", ("no training prompt fits",)),
    ("--config.data.source=EMPTY", ("holds no prompts",)),
    ("--config.data.source=MALFORMED", ("malformed.jsonl:2", "expected a JSON object")),
])
def test_bad_settings_stop_the_job_before_any_work(tmp_path, override, words):
  (tmp_path / "empty.jsonl").write_text("\n")
  (tmp_path / "malformed.jsonl").write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
  override = override.replace("EMPTY", str(tmp_path / "empty.jsonl")).replace(
      "MALFORMED", str(tmp_path / "malformed.jsonl"))
  workdir = tmp_path / "work"
  assert_one_line_error(run_cli(override, f"--workdir={workdir}", config="configs/sft.py:quick"),
                        *words)
  assert not workdir.exists()


@pytest.mark.slow
def test_settings_that_would_run_out_of_memory(tmp_path):
  workdir = tmp_path / "work"
  assert_one_line_error(run_cli("--config.rollout.batch_size=4096", f"--workdir={workdir}",
                                config="configs/opd.py"), "a Draft-OPD update needs about",
                        "lower rollout.batch_size")
  assert_one_line_error(run_cli("--config.train.batch_size=4096", f"--workdir={workdir}",
                                config="configs/sft.py"), "an SFT step needs about")
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
  assert_one_line_error(run_cli(f"--config.drafter.checkpoint={copy}",
                                f"--workdir={tmp_path / 'eval'}", config="configs/eval.py:quick"),
                        *words)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, smollm):
  from draftopd_jax.training import trainer
  from draftopd_jax.training.checkpoints import Checkpointer

  with pytest.raises(UserError, match="^loss became nan .* last good checkpoint is kept"):
    run_job("sft.py:quick", tmp_path, train__learning_rate=1e30, train__steps=12,
            data__num_prompts=4, train__warmup_steps=1)
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
