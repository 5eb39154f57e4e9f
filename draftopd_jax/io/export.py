"""Drafters out to the Hugging Face layouts that serving engines load (`io/import_drafter.py`
reads them back).

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

The z-lab layout always has a drafter `norm`: a DFlash drafter with its own final norm writes it
there, one that reuses the target's (`own_final_norm=False`) writes a copy of the target's.
"""

import json
import pathlib

import numpy as np
from safetensors.numpy import save_file

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
                  "qwen3": "Qwen3ForCausalLM",
                  "qwen3_moe": "Qwen3MoeForCausalLM"}[target_cfg.family]
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
  if isinstance(drafter, DFlashDrafter):
    if fmt == "eagle3":
      raise UserError("a DFlash drafter exports to the dflash or speculators format, not eagle3")
    export = _export_dflash
  elif isinstance(drafter, Eagle3Drafter):
    if fmt == "dflash":
      raise UserError("an EAGLE-3 drafter exports to the eagle3 or speculators format, not dflash")
    export = _export_eagle3
  else:
    raise UserError(f"cannot export a {type(drafter).__name__}; export DFlash or EAGLE-3 drafters")
  tensors, config = export(fmt, drafter.cfg, _numpy(params), target_cfg, target_params, verifier)
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(directory / "model.safetensors"), metadata={"format": "pt"})
  (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  return directory


def _export_dflash(fmt: str, cfg: dflash.DFlashConfig, params: dict, target_cfg: ModelConfig,
                   target_params: dict, verifier: str) -> tuple[dict, dict]:
  """(tensors, config.json) of a DFlash drafter in the dflash or speculators format."""
  ids = list(cfg.target_layer_ids)
  tensors = _dflash_tensors(params)
  # The reference format always carries a drafter norm: ours, or a copy of the target's.
  norm = params["final_norm"] if cfg.own_final_norm else target_params["final_norm"]
  tensors["norm.weight"] = np.asarray(norm["scale"], np.float32)
  layer = _layer_config(cfg.layer, cfg.num_layers, "qwen3")
  if fmt == "dflash":
    return tensors, {**layer, "architectures": ["DFlashDraftModel"], "block_size": cfg.block_size,
                     "num_target_layers": target_cfg.num_layers,
                     "dflash_config": {"target_layer_ids": ids, "mask_token_id": cfg.mask_token_id,
                                       "block_size": cfg.block_size}}
  target_embed = np.asarray(target_params["embed"]["embedding"], np.float32)
  lm_head = target_params.get("lm_head", {}).get("kernel")
  tensors["embed_tokens.weight"] = target_embed
  tensors["lm_head.weight"] = target_embed if lm_head is None else np.asarray(lm_head, np.float32).T
  return tensors, {
      "architectures": ["DFlashSpeculator"], "speculators_model_type": "dflash",
      "speculators_version": SPECULATORS_VERSION, "draft_vocab_size": target_cfg.vocab_size,
      "block_size": cfg.block_size, "aux_hidden_state_layer_ids": [i + 1 for i in ids],
      "mask_token_id": cfg.mask_token_id, "target_hidden_size": None,
      "sliding_window_non_causal": False, "sample_from_anchor": False,
      "transformer_layer_config": layer,
      "speculators_config": _speculators_config("dflash", cfg.block_size - 1, verifier,
                                                target_cfg)}


def _export_eagle3(fmt: str, cfg: eagle3.Eagle3Config, params: dict, target_cfg: ModelConfig,
                   target_params: dict, verifier: str) -> tuple[dict, dict]:
  """(tensors, config.json) of an EAGLE-3 drafter in the eagle3 or speculators format."""
  ids = list(cfg.target_layer_ids)
  layer = _layer_config(cfg.layer, 1, "llama")
  prefix = "midlayer." if fmt == "eagle3" else "layers.0."
  tensors = {**_eagle3_tensors(params, prefix),
             **_vocab_maps(params["d2t"], target_cfg.vocab_size)}
  common = {"draft_vocab_size": cfg.draft_vocab_size, "norm_before_residual": False}
  if fmt == "eagle3":
    return tensors, {**layer, **common, "architectures": ["LlamaForCausalLMEagle3"],
                     "block_size": cfg.block_size,  # ours: engines take the draft length as a flag
                     "eagle_config": {"eagle_aux_hidden_state_layer_ids": ids},
                     "eagle_aux_hidden_state_layer_ids": [i + 1 for i in ids]}
  tensors["embed_tokens.weight"] = np.asarray(target_params["embed"]["embedding"], np.float32)
  return tensors, {
      **common, "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
      "speculators_version": SPECULATORS_VERSION, "norm_before_fc": False, "fc_norm": False,
      "norm_output": False, "embed_requires_grad": False, "target_hidden_size": None,
      "eagle_aux_hidden_state_layer_ids": [i + 1 for i in ids],
      "transformer_layer_config": layer,
      "speculators_config": _speculators_config("eagle3", cfg.block_size - 1, verifier,
                                                target_cfg)}


def _numpy(tree):
  """Host arrays, floating point ones (bfloat16 included) as float32."""
  if isinstance(tree, dict):
    return {k: _numpy(v) for k, v in tree.items()}
  array = np.asarray(tree)
  return array.astype(np.float32) if array.dtype.kind == "f" or array.dtype.name == "bfloat16" \
      else array
