"""Maps checkpoint tensor names onto our parameter tree (shared by the HF and GGUF readers)."""

from collections.abc import Callable

import jax
import numpy as np

from draftopd_jax.errors import UserError
from draftopd_jax.models import ModelConfig, Params, param_shapes

# Our path under `layers` -> (Hugging Face name after "model.layers.{i}.", GGUF name after "blk.{i}.").
LAYER_TENSORS = {
    "attn/q/kernel": ("self_attn.q_proj.weight", "attn_q.weight"),
    "attn/q/bias": ("self_attn.q_proj.bias", "attn_q.bias"),
    "attn/k/kernel": ("self_attn.k_proj.weight", "attn_k.weight"),
    "attn/k/bias": ("self_attn.k_proj.bias", "attn_k.bias"),
    "attn/v/kernel": ("self_attn.v_proj.weight", "attn_v.weight"),
    "attn/v/bias": ("self_attn.v_proj.bias", "attn_v.bias"),
    "attn/o/kernel": ("self_attn.o_proj.weight", "attn_output.weight"),
    "attn/o/bias": ("self_attn.o_proj.bias", "attn_output.bias"),
    "attn/q_norm/scale": ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    "attn/k_norm/scale": ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    "attn_norm/scale": ("input_layernorm.weight", "attn_norm.weight"),
    "mlp_norm/scale": ("post_attention_layernorm.weight", "ffn_norm.weight"),
    "mlp/gate/kernel": ("mlp.gate_proj.weight", "ffn_gate.weight"),
    "mlp/up/kernel": ("mlp.up_proj.weight", "ffn_up.weight"),
    "mlp/down/kernel": ("mlp.down_proj.weight", "ffn_down.weight"),
    "mlp/router/kernel": ("mlp.gate.weight", "ffn_gate_inp.weight"),
}
# A MoE layer's experts, [X, in, out] in our tree. Hugging Face keeps them per expert
# (`mlp.experts.{e}.gate_proj.weight`, [out, in]) or, since transformers 5, fused
# (`mlp.experts.gate_up_proj` [X, 2J, D] with the gate first, `mlp.experts.down_proj` [X, D, J]);
# GGUF stacks them as one tensor, [X, out, in] in numpy order.
EXPERT_TENSORS = {
    "mlp/gate_XxDxJ": ("gate_proj", "ffn_gate_exps.weight"),
    "mlp/up_XxDxJ": ("up_proj", "ffn_up_exps.weight"),
    "mlp/down_XxJxD": ("down_proj", "ffn_down_exps.weight"),
}
GLOBAL_TENSORS = {
    "embed/embedding": ("model.embed_tokens.weight", "token_embd.weight"),
    "final_norm/scale": ("model.norm.weight", "output_norm.weight"),
    "lm_head/kernel": ("lm_head.weight", "output.weight"),
}
HF, GGUF = 0, 1


def checkpoint_name(path: str, layer: int | None, fmt: int) -> str:
  if layer is None:
    return GLOBAL_TENSORS[path][fmt]
  prefix = f"model.layers.{layer}." if fmt == HF else f"blk.{layer}."
  return prefix + LAYER_TENSORS[path][fmt]


def read_experts(read: Callable[[str], np.ndarray], path: str, layer: int, fmt: int,
                 num_experts: int) -> np.ndarray:
  """One expert weight of a layer, all experts stacked, [X, out, in]."""
  if fmt == GGUF:
    return read(f"blk.{layer}.{EXPERT_TENSORS[path][GGUF]}")
  prefix, projection = f"model.layers.{layer}.mlp.experts.", EXPERT_TENSORS[path][HF]
  try:
    return np.stack([read(f"{prefix}{e}.{projection}.weight") for e in range(num_experts)])
  except KeyError:
    if projection == "down_proj":
      return read(f"{prefix}down_proj")
    gate_up_XxOxI = read(f"{prefix}gate_up_proj")
    half = gate_up_XxOxI.shape[1] // 2
    return gate_up_XxOxI[:, :half] if projection == "gate_proj" else gate_up_XxOxI[:, half:]


def assemble_params(cfg: ModelConfig, read: Callable[[str], np.ndarray], fmt: int,
                    source: str) -> Params:
  """Builds our parameter tree, reading each tensor by its checkpoint name with `read`.

  Linear weights are stored [out, in] in both formats and become [in, out] kernels; per-layer
  tensors are stacked on a leading layer axis, per stack of `cfg.layer_stacks`.
  """

  def tensor(path: str, layer: int | None, shape: tuple[int, ...]) -> np.ndarray:
    experts = path in EXPERT_TENSORS
    name = (checkpoint_name(path, layer, fmt) if not experts else
            f"blk.{layer}.{EXPERT_TENSORS[path][GGUF]}" if fmt == GGUF else
            f"model.layers.{layer}.mlp.experts.0.{EXPERT_TENSORS[path][HF]}.weight")
    try:
      array = (read_experts(read, path, layer, fmt, cfg.num_experts) if experts else read(name))
    except KeyError:
      raise UserError(f"{source} has no tensor {name!r}; the checkpoint does not match its "
                      "config (wrong architecture or a truncated file)") from None
    if path.endswith("kernel"):
      array = array.T
    elif experts:
      array = array.transpose(0, 2, 1)
    if array.shape != shape:
      raise UserError(f"{source}: tensor {name!r} has shape {array.shape}, expected {shape} "
                      "from the config")
    return array

  def build(key_path, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    path = "/".join(k.key for k in key_path)
    stack, _, layer_path = path.partition("/")
    if stack in cfg.layer_stacks:
      layers = [tensor(layer_path, i, leaf.shape[1:]) for i in cfg.layer_stacks[stack]]
      return np.stack(layers).astype(leaf.dtype)
    return tensor(path, None, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(build, param_shapes(cfg))
