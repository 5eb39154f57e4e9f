"""Export to serving formats: names, shapes and dtypes as docs/export_formats.md specifies them,
config keys, and a round trip (export, import, identical drafter and logits)."""

import json
import pathlib
import re

import numpy as np
import pytest
from inprocess import run_job
from safetensors.numpy import load_file, save_file

from draftopd_jax.errors import UserError
from draftopd_jax.io import export
from draftopd_jax.io.drafter_checkpoint import save_drafter
from draftopd_jax.io.import_drafter import import_drafter
from draftopd_jax.jobs.export import drafter_logits
from draftopd_jax.models import ModelConfig, dflash, eagle3, init_params
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET_CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, num_layers=4, num_heads=4,
                         num_kv_heads=2, head_dim=8, intermediate_size=48)
TARGET = init_params(TARGET_CFG, seed=3)


def spec_sections() -> dict[str, tuple[dict, dict]]:
  """{section title: ({tensor: (shape, dtype)}, {config key: value text})} from the spec."""
  sections, title = {}, None
  for line in (ROOT / "docs" / "export_formats.md").read_text().splitlines():
    if line.startswith("## "):
      title = line[3:].split(" (")[0]
      sections[title] = ({}, {})
    cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
    if title and len(cells) == 3:
      sections[title][0][cells[0].strip("`")] = (cells[1], cells[2])
    elif title and len(cells) == 2:
      sections[title][1][cells[0].strip("`")] = cells[1]
  return sections


def expected_tensors(tensors: dict, symbols: dict, num_layers: int) -> dict:
  out = {}
  for name, (shape, dtype) in tensors.items():
    dims = tuple(eval(d.replace("·", "*"), {}, dict(symbols))  # noqa: S307 (our own spec)
                 for d in shape.strip("[]").split(","))
    for i in range(num_layers) if "{i}" in name else [None]:
      out[name.replace("{i}", str(i))] = (dims, dtype)
  return out


def dflash_drafter(own_final_norm: bool = True):
  cfg = dflash.DFlashConfig.for_target(TARGET_CFG, num_layers=2, block_size=4, mask_token_id=63,
                                       target_layer_ids=(0, 2, 3), own_final_norm=own_final_norm)
  params = dflash.init_params(cfg, seed=1)
  if own_final_norm:  # a trained norm, unlike the target's
    params["final_norm"]["scale"] = np.linspace(0.5, 1.5, TARGET_CFG.hidden_size, dtype=np.float32)
  return DFlashDrafter(cfg), params


def dflash_drafter_with_target_norm():
  return dflash_drafter(own_final_norm=False)


def eagle3_drafter():
  cfg = eagle3.Eagle3Config.for_target(TARGET_CFG, block_size=5, draft_vocab_size=48)
  d2t = eagle3.build_draft_vocab(np.random.default_rng(0).integers(0, 50, 64), 48)
  return Eagle3Drafter(cfg), {"model": eagle3.init_params(cfg, seed=2), "d2t": d2t}


CASES = [("dflash", dflash_drafter, "dflash: z-lab DFlash"),
         ("dflash", dflash_drafter_with_target_norm, "dflash: z-lab DFlash"),
         ("speculators", dflash_drafter, "speculators: vLLM speculators, DFlash drafter"),
         ("eagle3", eagle3_drafter, "eagle3: EAGLE-3"),
         ("speculators", eagle3_drafter, "speculators: vLLM speculators, EAGLE-3 drafter")]


@pytest.mark.parametrize("fmt, make, section", CASES, ids=[c[2].split(":")[0] + "-" + c[1].__name__
                                                            for c in CASES])
def test_export_matches_the_written_spec_and_round_trips(tmp_path, fmt, make, section):
  drafter, params = make()
  cfg = drafter.cfg
  out = export.export_drafter(tmp_path, fmt, drafter, params, TARGET_CFG, TARGET, "org/target")
  tensors_spec, config_spec = spec_sections()[section]
  layer = cfg.layer
  symbols = {"H": layer.hidden_size, "F": len(cfg.target_layer_ids), "nh": layer.num_heads,
             "nkv": layer.num_kv_heads, "d": layer.head_dim, "I": layer.intermediate_size,
             "V": TARGET_CFG.vocab_size, "Vd": getattr(cfg, "draft_vocab_size", 0)}
  expected = expected_tensors(tensors_spec, symbols, getattr(cfg, "num_layers", 1))
  saved = load_file(str(out / "model.safetensors"))
  assert set(saved) == set(expected)
  for name, (shape, dtype) in expected.items():
    assert (saved[name].shape, saved[name].dtype.name) == (shape, dtype), name

  config = json.loads((out / "config.json").read_text())
  assert set(config_spec) <= set(config)
  layer_config = config.get("transformer_layer_config", config)
  assert (layer_config["hidden_size"], layer_config["vocab_size"]) == (32, 64)
  ids = list(cfg.target_layer_ids)
  if fmt == "dflash":
    assert config["dflash_config"] == {"target_layer_ids": ids, "mask_token_id": 63,
                                       "block_size": 4}
  elif fmt == "eagle3":
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == ids
    assert np.array_equal(np.arange(48) + saved["d2t"], params["d2t"])  # offsets
    assert saved["t2d"].sum() == 48 and np.array_equal(np.flatnonzero(saved["t2d"]), params["d2t"])
  else:
    key = "aux_hidden_state_layer_ids" if isinstance(drafter, DFlashDrafter) else \
        "eagle_aux_hidden_state_layer_ids"
    assert config[key] == [i + 1 for i in ids]
    method = config["speculators_config"]["proposal_methods"][0]
    assert method["speculative_tokens"] == cfg.block_size - 1
    assert config["speculators_config"]["verifier"]["name_or_path"] == "org/target"

  back, back_params = import_drafter(out, TARGET_CFG, TARGET)
  assert back == drafter
  np.testing.assert_array_equal(drafter_logits(back, back_params, TARGET_CFG, TARGET),
                                drafter_logits(drafter, params, TARGET_CFG, TARGET))


def test_wrong_format_and_foreign_checkpoints_are_refused(tmp_path):
  drafter, params = dflash_drafter()
  with pytest.raises(UserError, match="not eagle3"):
    export.export_drafter(tmp_path, "eagle3", drafter, params, TARGET_CFG, TARGET, "t")
  with pytest.raises(UserError, match="export format 'gguf'"):
    export.export_drafter(tmp_path, "gguf", drafter, params, TARGET_CFG, TARGET, "t")
  out = export.export_drafter(tmp_path / "d", "dflash", drafter, params, TARGET_CFG, TARGET, "t")
  other_target = TARGET_CFG.replace(hidden_size=64, head_dim=16)
  with pytest.raises(UserError, match="hidden size 32"):
    import_drafter(out, other_target, init_params(other_target))
  tensors = load_file(str(out / "model.safetensors"))
  del tensors["fc.weight"]
  save_file(tensors, str(out / "model.safetensors"))
  with pytest.raises(UserError, match="lacks tensor 'fc.weight'"):
    import_drafter(out, TARGET_CFG, TARGET)


@pytest.mark.slow
def test_export_job_on_the_real_target(tmp_path, smollm, capsys):
  cfg = dflash.DFlashConfig.for_target(smollm.cfg, num_layers=1, block_size=8, mask_token_id=0)
  save_drafter(tmp_path / "drafter", DFlashDrafter(cfg), dflash.init_params(cfg), smollm.cfg,
               smollm.tokenizer)
  result = run_job("export.py:speculators", tmp_path / "out", drafter=str(tmp_path / "drafter"))
  assert result["format"] == "speculators" and result["max_logit_difference"] == 0.0
  assert re.search(r"speculators format \(round trip: max logit difference 0\.0e\+00\)",
                   capsys.readouterr().out)
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["speculators_config"]["verifier"]["architectures"] == ["LlamaForCausalLM"]
  packed = run_job("export.py:packed", tmp_path / "packed", drafter=str(tmp_path / "drafter"))
  assert packed["max_logit_difference"] == 0.0  # against the weights rounded to bfloat16
  assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["drafter.json",
                                                                      "params.safetensors"]
  assert "loads back exactly" in capsys.readouterr().out
