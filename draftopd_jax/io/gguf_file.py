"""GGUF files (llama.cpp): metadata -> ModelConfig, dequantized tensors -> params.

Reads with the `gguf` package only; no PyTorch. llama.cpp's converter permutes the rows of Q and K
of llama-architecture models (its RoPE pairs adjacent dims, Hugging Face pairs the two halves of a
head); we undo that so the weights equal the Hugging Face ones.
"""

import pathlib
from typing import Any

import gguf
import numpy as np
from gguf.quants import dequantize

from draftopd_jax.errors import UserError
from draftopd_jax.io.weights import GGUF, assemble_params
from draftopd_jax.models import ModelConfig, Params

FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3moe": "qwen3_moe"}


def open_gguf(path: str | pathlib.Path) -> gguf.GGUFReader:
  try:
    return gguf.GGUFReader(path)
  except ValueError as e:  # unknown enum values (quant types, field types) land here
    raise UserError(f"cannot read GGUF file {path}: {e} (a newer llama.cpp format or an "
                    "unknown quant type; re-export it with a common type such as Q8_0 or F16)") from None
  except (OSError, EOFError) as e:
    raise UserError(f"cannot read GGUF file {path}: {e}") from None


def metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
  """All key/value fields, decoded to Python values."""
  return {name: field.contents() for name, field in reader.fields.items()}


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], source: str,
                     dtype: str = "float32") -> ModelConfig:
  arch = meta.get("general.architecture")
  if arch not in FAMILIES:
    raise UserError(f"{source}: unsupported GGUF architecture {arch!r}; supported: "
                    f"{', '.join(FAMILIES)}")
  if "rope_freqs.weight" in tensor_names:
    raise UserError(f"{source}: per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 "
                    "scaling) are not read from GGUF; load the Hugging Face folder instead")

  def get(key: str, default: Any = None) -> Any:
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise UserError(f"{source}: GGUF metadata lacks {arch}.{key}")
    return value

  hidden, heads = get("embedding_length"), get("attention.head_count")
  scaling = {}
  if (kind := meta.get(f"{arch}.rope.scaling.type", "none")) not in ("none", "default"):
    scaling = {"rope_type": kind, "factor": get("rope.scaling.factor")}
    if (original := meta.get(f"{arch}.rope.scaling.original_context_length")) is not None:
      scaling["original_max_position_embeddings"] = original
  return ModelConfig(
      family=FAMILIES[arch],
      vocab_size=meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"]),
      hidden_size=hidden,
      num_layers=get("block_count"),
      num_heads=heads,
      num_kv_heads=get("attention.head_count_kv", heads),
      head_dim=get("attention.key_length", hidden // heads),
      intermediate_size=get("feed_forward_length"),
      rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
      rope_theta=float(get("rope.freq_base", 10_000.0)),
      rope_scaling=tuple(sorted(scaling.items())),
      max_position_embeddings=get("context_length", 8192),
      tie_embeddings="output.weight" not in tensor_names,
      qkv_bias="blk.0.attn_q.bias" in tensor_names,
      o_bias="blk.0.attn_output.bias" in tensor_names,
      qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
      dtype=dtype,
      **(_moe_fields(get, tensor_names) if arch == "qwen3moe" else {}),
  )


def _moe_fields(get, tensor_names: set[str]) -> dict[str, Any]:
  """llama.cpp keeps no sparse-layer rule: a layer without a router (`ffn_gate_inp`) is dense.
  It always renormalises Qwen3-MoE's top-k gates unless `expert_weights_norm` says otherwise."""
  dense = tuple(i for i in range(get("block_count"))
                if f"blk.{i}.ffn_gate_inp.weight" not in tensor_names)
  return dict(num_experts=get("expert_count"), num_experts_per_tok=get("expert_used_count"),
              moe_intermediate_size=get("expert_feed_forward_length"),
              norm_topk_prob=bool(get("expert_weights_norm", True)), mlp_only_layers=dense)


def unpermute_rope_rows(w_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's Q/K permutation: per head, interleaved pairs -> two halves."""
  out, rest = w_OxI.shape[0], w_OxI.shape[1:]
  per_head = w_OxI.reshape(num_heads, out // num_heads // 2, 2, *rest)
  return per_head.swapaxes(1, 2).reshape(w_OxI.shape)


def load_gguf(path: str | pathlib.Path, dtype: str = "float32"
              ) -> tuple[ModelConfig, Params, dict[str, Any]]:
  """Reads a GGUF file into (config, params, metadata); the metadata holds the tokenizer."""
  reader = open_gguf(path)
  meta = metadata(reader)
  tensors = {t.name: t for t in reader.tensors}
  cfg = config_from_gguf(meta, set(tensors), str(path), dtype)

  def read(name: str) -> np.ndarray:
    t = tensors[name]
    try:
      array = dequantize(t.data, t.tensor_type)
    except NotImplementedError:
      raise UserError(f"{path}: tensor {name!r} uses GGUF quant type {t.tensor_type.name}, which "
                      "cannot be dequantized here; use a file quantized as F32, F16, BF16, Q8_0, "
                      "Q4_0/1, Q5_0/1 or a K-quant") from None
    array = np.asarray(array, np.float32)
    if cfg.family == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
      heads = cfg.num_heads if name.endswith("attn_q.weight") else cfg.num_kv_heads
      array = unpermute_rope_rows(array, heads)
    return array

  return cfg, assemble_params(cfg, read, GGUF, str(path)), meta
