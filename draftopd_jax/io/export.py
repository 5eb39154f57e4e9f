"""Drafters out to (and back from) the Hugging Face layouts that serving engines load.

Formats (names, shapes and config keys are specified in docs/export_formats.md):
* "dflash": the z-lab DFlash layout (`DFlashDraftModel`, `dflash_config`), which SGLang and vLLM
  load next to the target whose embedding and LM head it borrows;
* "eagle3": the EAGLE-3 layout of SpecForge / SafeAILab (`LlamaForCausalLMEagle3`, `midlayer.*`,
  `d2t` as offsets and `t2d` as a mask);
* "speculators": vLLM's speculators format (`speculators_config`) for either drafter, with the
  target's embedding (and, for DFlash, LM head) copied in, as that format stores them.
Weights go to `model.safetensors` in float32, linear weights as [out, in].

Layer ids: ours and z-lab's and SpecForge's name the output of decoder layer i; the speculators
format (and vLLM) count the captured stream entering layer i + 1, so it stores i + 1.

Our DFlash reuses the target's final norm before the target's LM head, where the z-lab layout has
a drafter `norm`: export writes the target's weights there, and import accepts only a drafter whose
`norm` equals its target's (one trained elsewhere with its own final norm is refused).
"""

import json
import pathlib

import numpy as np
from safetensors.numpy import load_file, save_file

from draftopd_jax.errors import UserError
from draftopd_jax.models import ModelConfig, dflash, eagle3
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter

FORMATS = ("dflash", "eagle3", "speculators")
SPECULATORS_VERSION = "0.5.0"


def _layer_config(cfg: ModelConfig, num_layers: int, model_type: str) -> dict:
  """The Hugging Face decoder-config keys of a drafter layer stack built on `cfg`'s shapes."""
  rope = {"rope_type": "default", **cfg.rope_scaling_dict()} if cfg.rope_scaling else None
  return {"model_type": model_type, "hidden_size": cfg.hidden_size,
          "intermediate_size": cfg.intermediate_size, "num_hidden_layers": num_layers,
          "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
          "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
          "rope_theta": cfg.rope_theta, "rope_scaling": rope,
          "max_position_embeddings": cfg.max_position_embeddings, "vocab_size": cfg.vocab_size,
          "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
          "torch_dtype": "float32"}


def _attention_mlp(prefix: str, get, with_qk_norm: bool) -> dict[str, np.ndarray]:
  """One decoder layer's tensors; `get(name)` returns our array of that parameter path."""
  out = {f"{prefix}self_attn.{p}_proj.weight": get(f"{p}.kernel").T for p in "qkvo"}
  out.update({f"{prefix}mlp.{p}_proj.weight": get(f"mlp.{p}.kernel").T
              for p in ("gate", "up", "down")})
  if with_qk_norm:
    out.update({f"{prefix}self_attn.{p}_norm.weight": get(f"{p}_norm.scale") for p in "qk"})
  return out


def _dflash_tensors(params: dict) -> dict[str, np.ndarray]:
  layers = params["layers"]
  tensors = {"fc.weight": params["fc"]["kernel"].T,
             "hidden_norm.weight": params["context_norm"]["scale"]}
  for i in range(layers["attn_norm"]["scale"].shape[0]):

    def get(path: str, i=i) -> np.ndarray:
      value = layers
      for part in path.split("."):
        value = value[part]
      return value[i]

    tensors[f"layers.{i}.input_layernorm.weight"] = get("attn_norm.scale")
    tensors[f"layers.{i}.post_attention_layernorm.weight"] = get("mlp_norm.scale")
    tensors.update(_attention_mlp(f"layers.{i}.", get, with_qk_norm=True))
  return tensors


def _eagle3_tensors(params: dict, prefix: str) -> dict[str, np.ndarray]:
  model = params["model"]

  def get(path: str) -> np.ndarray:
    value = model if path.startswith("mlp.") else model["attn"]
    for part in path.split("."):
      value = value[part]
    return value

  tensors = {"fc.weight": model["fc"]["kernel"].T,
             f"{prefix}hidden_norm.weight": model["feature_norm"]["scale"],
             f"{prefix}input_layernorm.weight": model["embed_norm"]["scale"],
             f"{prefix}post_attention_layernorm.weight": model["mlp_norm"]["scale"],
             "norm.weight": model["final_norm"]["scale"],
             "lm_head.weight": model["lm_head"]["kernel"].T}
  tensors.update(_attention_mlp(prefix, get, with_qk_norm=False))
  return tensors


def _vocab_maps(d2t_Vd: np.ndarray, vocab_size: int) -> dict[str, np.ndarray]:
  """`d2t` as offsets (target id = draft id + d2t[draft id]) and `t2d` as a mask."""
  d2t_Vd = np.asarray(d2t_Vd, np.int64)
  return {"d2t": d2t_Vd - np.arange(len(d2t_Vd)),
          "t2d": np.asarray(eagle3.draft_ids(d2t_Vd, vocab_size) >= 0)}


def _speculators_config(algorithm: str, speculative_tokens: int, verifier: str,
                        target_cfg: ModelConfig) -> dict:
  architecture = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}[target_cfg.family]
  return {"algorithm": algorithm,
          "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens,
                                "verifier_accept_k": 1, "accept_tolerance": 0.0}],
          "default_proposal_method": "greedy",
          "verifier": {"name_or_path": verifier, "architectures": [architecture]}}


def export_drafter(directory: str | pathlib.Path, fmt: str, drafter, params: dict,
                   target_cfg: ModelConfig, target_params: dict, verifier: str) -> pathlib.Path:
  """Writes `config.json` and `model.safetensors` of `drafter` in format `fmt`; `verifier` names
  the target for the speculators format (a Hugging Face id or path)."""
  if fmt not in FORMATS:
    raise UserError(f"export format {fmt!r}; choose one of {', '.join(FORMATS)}")
  params = _numpy(params)
  target_embed = np.asarray(target_params["embed"]["embedding"], np.float32)
  cfg = drafter.cfg
  ids = list(cfg.target_layer_ids)
  if isinstance(drafter, DFlashDrafter):
    tensors = _dflash_tensors(params)
    # The reference format always carries a drafter norm: ours, or a copy of the target's.
    norm = params["final_norm"] if cfg.own_final_norm else target_params["final_norm"]
    tensors["norm.weight"] = np.asarray(norm["scale"], np.float32)
    layer = _layer_config(cfg.layer, cfg.num_layers, "qwen3")
    if fmt == "eagle3":
      raise UserError("a DFlash drafter exports to the dflash or speculators format, not eagle3")
    if fmt == "dflash":
      config = {**layer, "architectures": ["DFlashDraftModel"], "block_size": cfg.block_size,
                "num_target_layers": target_cfg.num_layers,
                "dflash_config": {"target_layer_ids": ids, "mask_token_id": cfg.mask_token_id,
                                  "block_size": cfg.block_size}}
    else:
      lm_head = target_params.get("lm_head", {}).get("kernel")
      tensors["embed_tokens.weight"] = target_embed
      tensors["lm_head.weight"] = (target_embed if lm_head is None
                                   else np.asarray(lm_head, np.float32).T)
      config = {"architectures": ["DFlashSpeculator"], "speculators_model_type": "dflash",
                "speculators_version": SPECULATORS_VERSION,
                "draft_vocab_size": target_cfg.vocab_size, "block_size": cfg.block_size,
                "aux_hidden_state_layer_ids": [i + 1 for i in ids],
                "mask_token_id": cfg.mask_token_id, "target_hidden_size": None,
                "sliding_window_non_causal": False, "sample_from_anchor": False,
                "transformer_layer_config": layer,
                "speculators_config": _speculators_config("dflash", cfg.block_size - 1, verifier,
                                                          target_cfg)}
  elif isinstance(drafter, Eagle3Drafter):
    if fmt == "dflash":
      raise UserError("an EAGLE-3 drafter exports to the eagle3 or speculators format, not dflash")
    layer = _layer_config(cfg.layer, 1, "llama")
    prefix = "midlayer." if fmt == "eagle3" else "layers.0."
    tensors = {**_eagle3_tensors(params, prefix),
               **_vocab_maps(params["d2t"], target_cfg.vocab_size)}
    common = {"draft_vocab_size": cfg.draft_vocab_size, "norm_before_residual": False}
    if fmt == "eagle3":
      config = {**layer, **common, "architectures": ["LlamaForCausalLMEagle3"],
                "block_size": cfg.block_size,  # ours: engines take the draft length as a flag
                "eagle_config": {"eagle_aux_hidden_state_layer_ids": ids},
                "eagle_aux_hidden_state_layer_ids": [i + 1 for i in ids]}
    else:
      tensors["embed_tokens.weight"] = target_embed
      config = {**common, "architectures": ["Eagle3Speculator"],
                "speculators_model_type": "eagle3", "speculators_version": SPECULATORS_VERSION,
                "norm_before_fc": False, "fc_norm": False, "norm_output": False,
                "embed_requires_grad": False, "target_hidden_size": None,
                "eagle_aux_hidden_state_layer_ids": [i + 1 for i in ids],
                "transformer_layer_config": layer,
                "speculators_config": _speculators_config("eagle3", cfg.block_size - 1, verifier,
                                                          target_cfg)}
  else:
    raise UserError(f"cannot export a {type(drafter).__name__}; export DFlash or EAGLE-3 drafters")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(directory / "model.safetensors"), metadata={"format": "pt"})
  (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  return directory


def _numpy(tree):
  """Host arrays, floating point ones (bfloat16 included) as float32."""
  if isinstance(tree, dict):
    return {k: _numpy(v) for k, v in tree.items()}
  array = np.asarray(tree)
  return array.astype(np.float32) if array.dtype.kind == "f" or array.dtype.name == "bfloat16" \
      else array


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
