"""Drafters back from the serving layouts `io/export.py` writes (and that other trainers write:
z-lab DFlash, SpecForge / SafeAILab EAGLE-3, vLLM speculators), checked against the target.

A DFlash `norm` equal to the target's final norm is taken for the target's: the drafter then
reuses the target's norm (`own_final_norm=False`); any other `norm` is the drafter's own.
"""

import json
import pathlib

import numpy as np
from safetensors.numpy import load_file

from draftopd_jax.errors import UserError
from draftopd_jax.models import ModelConfig, dflash, eagle3
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter


def import_drafter(directory: str | pathlib.Path, target_cfg: ModelConfig, target_params: dict):
  """(drafter, params) from an exported folder in any of `FORMATS`, checked against the target."""
  directory = pathlib.Path(directory)
  if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
    raise UserError(f"{directory} has no config.json and model.safetensors to import")
  config = json.loads((directory / "config.json").read_text())
  tensors = load_file(str(directory / "model.safetensors"))
  kind = config.get("speculators_model_type") or (
      "dflash" if "dflash_config" in config else
      "eagle3" if "LlamaForCausalLMEagle3" in config.get("architectures", []) else None)
  if kind not in ("dflash", "eagle3"):
    raise UserError(f"{directory}/config.json is neither a DFlash, an EAGLE-3 nor a speculators "
                    "drafter config")
  speculators = "speculators_model_type" in config
  layer = config["transformer_layer_config"] if speculators else config
  if layer["hidden_size"] != target_cfg.hidden_size or layer["vocab_size"] != target_cfg.vocab_size:
    raise UserError(f"{directory} was made for a target of hidden size {layer['hidden_size']} "
                    f"and vocabulary {layer['vocab_size']}, not {target_cfg.hidden_size} and "
                    f"{target_cfg.vocab_size}")
  embed = np.asarray(target_params["embed"]["embedding"], np.float32)
  if "embed_tokens.weight" in tensors and not np.array_equal(tensors["embed_tokens.weight"], embed):
    raise UserError(f"{directory} carries another target's embedding")
  try:
    if kind == "dflash":
      return _import_dflash(config, layer, tensors, speculators, target_cfg, target_params)
    return _import_eagle3(config, tensors, speculators, target_cfg)
  except KeyError as e:
    raise UserError(f"{directory}/model.safetensors lacks tensor {e}") from None


def _import_dflash(config, layer, tensors, speculators, target_cfg, target_params):
  if speculators:
    ids = [i - 1 for i in config["aux_hidden_state_layer_ids"]]
    block_size, mask = config["block_size"], config["mask_token_id"]
  else:
    ids, mask = config["dflash_config"]["target_layer_ids"], config["dflash_config"]["mask_token_id"]
    block_size = config.get("block_size") or config["dflash_config"]["block_size"]
  # A norm equal to the target's is the target's (drafters made without their own norm).
  own_norm = not np.array_equal(tensors["norm.weight"],
                                np.asarray(target_params["final_norm"]["scale"], np.float32))
  try:
    cfg = dflash.DFlashConfig.for_target(target_cfg, num_layers=layer["num_hidden_layers"],
                                         block_size=block_size, mask_token_id=mask,
                                         target_layer_ids=tuple(ids), own_final_norm=own_norm)
  except ValueError as e:
    raise UserError(str(e)) from None
  like = dflash.init_params(cfg)
  layers = {name: [] for name in ("attn_norm", "mlp_norm", "q", "k", "v", "o", "q_norm", "k_norm",
                                  "gate", "up", "down")}
  for i in range(cfg.num_layers):
    p = f"layers.{i}."
    layers["attn_norm"].append(tensors[p + "input_layernorm.weight"])
    layers["mlp_norm"].append(tensors[p + "post_attention_layernorm.weight"])
    for name in "qkvo":
      layers[name].append(tensors[f"{p}self_attn.{name}_proj.weight"].T)
    for name in "qk":
      layers[f"{name}_norm"].append(tensors[f"{p}self_attn.{name}_norm.weight"])
    for name in ("gate", "up", "down"):
      layers[name].append(tensors[f"{p}mlp.{name}_proj.weight"].T)
  stack = lambda name: np.stack(layers[name])
  params = {"fc": {"kernel": tensors["fc.weight"].T},
            "context_norm": {"scale": tensors["hidden_norm.weight"]},
            "layers": {**{n: {"scale": stack(n)} for n in ("attn_norm", "mlp_norm", "q_norm",
                                                         "k_norm")},
                       **{n: {"kernel": stack(n)} for n in "qkvo"},
                       "mlp": {n: {"kernel": stack(n)} for n in ("gate", "up", "down")}}}
  if own_norm:
    params["final_norm"] = {"scale": tensors["norm.weight"]}
  _check_shapes(params, like)
  return DFlashDrafter(cfg), params


def _import_eagle3(config, tensors, speculators, target_cfg):
  if speculators:
    ids = [i - 1 for i in config["eagle_aux_hidden_state_layer_ids"]]
  else:
    ids = config["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
  block_size = (config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] + 1
                if speculators else config.get("block_size", 8))
  try:
    cfg = eagle3.Eagle3Config.for_target(target_cfg, block_size=block_size,
                                         draft_vocab_size=config["draft_vocab_size"],
                                         target_layer_ids=tuple(ids))
  except ValueError as e:
    raise UserError(str(e)) from None
  p = "layers.0." if speculators else "midlayer."
  attn = {name: {"kernel": tensors[f"{p}self_attn.{name}_proj.weight"].T} for name in "qkvo"}
  model = {"fc": {"kernel": tensors["fc.weight"].T}, "attn": attn,
           "feature_norm": {"scale": tensors[p + "hidden_norm.weight"]},
           "embed_norm": {"scale": tensors[p + "input_layernorm.weight"]},
           "mlp_norm": {"scale": tensors[p + "post_attention_layernorm.weight"]},
           "mlp": {n: {"kernel": tensors[f"{p}mlp.{n}_proj.weight"].T} for n in ("gate", "up",
                                                                                 "down")},
           "final_norm": {"scale": tensors["norm.weight"]},
           "lm_head": {"kernel": tensors["lm_head.weight"].T}}
  _check_shapes(model, eagle3.init_params(cfg))
  offsets = tensors.get("d2t", np.zeros(cfg.draft_vocab_size, np.int64))  # none: full vocabulary
  d2t = (np.arange(cfg.draft_vocab_size) + offsets).astype(np.int32)
  return Eagle3Drafter(cfg), {"model": model, "d2t": d2t}


def _check_shapes(params: dict, like: dict, path: str = "") -> None:
  for key, value in like.items():
    if isinstance(value, dict):
      _check_shapes(params[key], value, f"{path}{key}/")
    elif np.shape(params[key]) != np.shape(value):
      raise UserError(f"{path}{key} has shape {np.shape(params[key])}, expected {np.shape(value)}")
