"""Hugging Face checkpoint folders: `config.json` + `*.safetensors` (single or sharded)."""

import json
import pathlib
from typing import Any

import numpy as np
from safetensors import safe_open

from draftopd_jax.errors import UserError
from draftopd_jax.io.weights import HF, assemble_params
from draftopd_jax.models import ModelConfig, Params
from draftopd_jax.models.config import freeze_rope_scaling

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}


def config_from_hf(hf: dict[str, Any], dtype: str = "float32") -> ModelConfig:
  """Translates a transformers `config.json` dict (v4 or v5 RoPE keys) into a ModelConfig."""
  architectures = hf.get("architectures") or ["<missing>"]
  family = ARCHITECTURES.get(architectures[0])
  if family is None:
    raise UserError(f"unsupported architecture {architectures[0]!r}; supported: "
                    f"{', '.join(ARCHITECTURES)}")
  if hf.get("mlp_bias"):
    raise UserError("MLP biases (mlp_bias=true) are not supported")
  if hf.get("use_sliding_window"):
    raise UserError("sliding-window attention (use_sliding_window=true) is not supported")
  # transformers 5 moved theta and scaling into `rope_parameters`; v4 has them top level.
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  attention_bias = bool(hf.get("attention_bias", False))
  return ModelConfig(
      family=family,
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10_000.0)),
      rope_scaling=freeze_rope_scaling(rope),
      max_position_embeddings=hf.get("max_position_embeddings", 8192),
      tie_embeddings=hf.get("tie_word_embeddings", False),
      qkv_bias=family == "qwen2" or attention_bias,
      o_bias=attention_bias,
      qk_norm=family in ("qwen3", "qwen3_moe"),
      dtype=dtype,
      **(_moe_fields(hf) if family == "qwen3_moe" else {}),
  )


def _moe_fields(hf: dict[str, Any]) -> dict[str, Any]:
  # Published configs say num_experts; transformers 5 writes num_local_experts.
  return dict(num_experts=hf.get("num_experts") or hf["num_local_experts"],
              num_experts_per_tok=hf["num_experts_per_tok"],
              moe_intermediate_size=hf["moe_intermediate_size"],
              norm_topk_prob=hf.get("norm_topk_prob", False),
              decoder_sparse_step=hf.get("decoder_sparse_step", 1),
              mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()))


def load_hf_folder(folder: str | pathlib.Path, dtype: str = "float32") -> tuple[ModelConfig, Params]:
  """Reads a Hugging Face folder into (config, params) without PyTorch."""
  folder = pathlib.Path(folder)
  config_file = folder / "config.json"
  if not config_file.is_file():
    raise UserError(f"{folder} has no config.json; pass a Hugging Face model folder or a .gguf file")
  cfg = config_from_hf(json.loads(config_file.read_text()), dtype)
  files = sorted(folder.glob("*.safetensors"))
  if not files:
    raise UserError(f"{folder} has no *.safetensors files (PyTorch .bin checkpoints are not read; "
                    "re-save with save_pretrained(safe_serialization=True))")
  where = {}
  for file in files:
    with safe_open(file, framework="flax") as f:
      where.update({name: file for name in f.keys()})

  def read(name: str) -> np.ndarray:
    with safe_open(where[name], framework="flax") as f:
      return np.asarray(f.get_tensor(name))

  return cfg, assemble_params(cfg, read, HF, str(folder))
