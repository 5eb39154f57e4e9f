"""Architecture description of a target decoder (Llama / Qwen2 / Qwen3 / Qwen3-MoE family).

The config is a frozen, hashable dataclass so it can be a static argument of jitted functions.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("llama", "qwen2", "qwen3", "qwen3_moe")
MOE_DISPATCHES = ("dense", "ragged")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a decoder-only target model.

  The dense families differ only in two switches: Qwen2 adds a bias to the Q/K/V projections
  (`qkv_bias`), Qwen3 RMS-normalizes each query/key head before RoPE (`qk_norm`). Qwen3-MoE is
  Qwen3 whose sparse layers (`sparse_layers`, Hugging Face's rule) route each token to
  `num_experts_per_tok` of `num_experts` SwiGLU experts; its other layers keep a dense MLP of
  `intermediate_size`.
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
  num_experts: int = 0  # 0: a dense model
  num_experts_per_tok: int = 0
  moe_intermediate_size: int = 0
  norm_topk_prob: bool = False  # renormalise the chosen experts' gates to sum to 1
  decoder_sparse_step: int = 1
  mlp_only_layers: tuple[int, ...] = ()
  # How tokens reach their experts; the same numbers either way (models/moe.py says when each wins).
  moe_dispatch: str = "dense"

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"unknown model family {self.family!r}; expected one of {FAMILIES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
      raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} must be in 1.."
                       f"{self.num_experts} (num_experts)")
    if self.moe_dispatch not in MOE_DISPATCHES:
      raise ValueError(f"unknown moe_dispatch {self.moe_dispatch!r}; expected one of "
                       f"{MOE_DISPATCHES}")

  @property
  def sparse_layers(self) -> tuple[bool, ...]:
    """Per layer: does its MLP route tokens to experts? (Hugging Face's Qwen3-MoE rule.)"""
    return tuple(self.num_experts > 0 and i not in self.mlp_only_layers
                 and (i + 1) % self.decoder_sparse_step == 0 for i in range(self.num_layers))

  @property
  def layer_stacks(self) -> dict[str, tuple[int, ...]]:
    """Parameter subtrees of stacked layers -> the model layers each holds, in order. Layers with
    different MLPs cannot share one stack: `layers` holds the expert layers of a MoE model (all
    layers of a dense one), `dense_layers` a MoE model's dense-MLP layers, if it has any."""
    sparse = self.sparse_layers
    if not any(sparse):
      return {"layers": tuple(range(self.num_layers))}
    dense = tuple(i for i, s in enumerate(sparse) if not s)
    return {"layers": tuple(i for i, s in enumerate(sparse) if s),
            **({"dense_layers": dense} if dense else {})}

  @property
  def jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def rope_scaling_dict(self) -> dict[str, Any]:
    return dict(self.rope_scaling)

  def dense(self) -> "ModelConfig":
    """The same model without experts (the drafters' layers: drafters stay dense)."""
    return self.replace(family="qwen3" if self.family == "qwen3_moe" else self.family,
                        num_experts=0, num_experts_per_tok=0, moe_intermediate_size=0,
                        norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=())

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
    d["mlp_only_layers"] = tuple(d.get("mlp_only_layers", ()))  # a list after a JSON round trip
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
