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


def assemble_params(cfg: ModelConfig, read: Callable[[str], np.ndarray], fmt: int,
                    source: str) -> Params:
  """Builds our parameter tree, reading each tensor by its checkpoint name with `read`.

  Linear weights are stored [out, in] in both formats and become [in, out] kernels; per-layer
  tensors are stacked on a leading layer axis.
  """

  def tensor(path: str, layer: int | None, shape: tuple[int, ...]) -> np.ndarray:
    name = checkpoint_name(path, layer, fmt)
    try:
      array = read(name)
    except KeyError:
      raise UserError(f"{source} has no tensor {name!r}; the checkpoint does not match its "
                      "config (wrong architecture or a truncated file)") from None
    if path.endswith("kernel"):
      array = array.T
    if array.shape != shape:
      raise UserError(f"{source}: tensor {name!r} has shape {array.shape}, expected {shape} "
                      "from the config")
    return array

  def build(key_path, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    path = "/".join(k.key for k in key_path)
    if path.startswith("layers/"):
      path = path.removeprefix("layers/")
      layers = [tensor(path, i, leaf.shape[1:]) for i in range(cfg.num_layers)]
      return np.stack(layers).astype(leaf.dtype)
    return tensor(path, None, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(build, param_shapes(cfg))
