"""Architecture description of a target decoder (Llama / Qwen2 / Qwen3 family).

The config is a frozen, hashable dataclass so it can be a static argument of jitted functions.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("llama", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a decoder-only target model.

  The three families differ only in two switches: Qwen2 adds a bias to the Q/K/V projections
  (`qkv_bias`), Qwen3 RMS-normalizes each query/key head before RoPE (`qk_norm`).
  """

  family: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  # RoPE scaling as sorted (key, value) pairs so the config stays hashable; () means none.
  # Keys follow Hugging Face: rope_type ("linear" | "llama3" | "yarn"), factor, ...
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  max_position_embeddings: int = 8192
  tie_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  qk_norm: bool = False
  dtype: str = "float32"

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"unknown model family {self.family!r}; expected one of {FAMILIES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

  @property
  def jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def rope_scaling_dict(self) -> dict[str, Any]:
    return dict(self.rope_scaling)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["rope_scaling"] = self.rope_scaling_dict
    return out

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    d["rope_scaling"] = freeze_rope_scaling(d.get("rope_scaling"))
    return cls(**d)


def freeze_rope_scaling(scaling: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
  """Hashable form of a Hugging Face `rope_scaling` dict; `None` / default type become ()."""
  if not scaling or scaling.get("rope_type", scaling.get("type", "default")) == "default":
    return ()
  scaling = dict(scaling)
  scaling["rope_type"] = scaling.pop("type", None) or scaling["rope_type"]
  scaling.pop("rope_theta", None)  # transformers 5 keeps theta in the same dict; we keep it apart.
  return tuple(sorted((k, v) for k, v in scaling.items() if v is not None))


def check_layer_ids(layer_ids: tuple[int, ...], num_target_layers: int) -> None:
  """Target layer ids name decoder layer outputs: 0..L-1."""
  if not layer_ids or not all(0 <= i < num_target_layers for i in layer_ids):
    raise ValueError(f"target_layer_ids {list(layer_ids)} must be layers of the "
                     f"{num_target_layers}-layer target (0..{num_target_layers - 1})")
