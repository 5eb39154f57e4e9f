"""Writes tiny GGUF files from tiny transformers models, the way llama.cpp's converter does
(including its Q/K row permutation for llama), so the GGUF reader can be tested on small files."""

import gguf
import numpy as np

from draftopd_jax.io.weights import GLOBAL_TENSORS, LAYER_TENSORS


def permute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's convert-time permutation: per head, two halves -> interleaved pairs."""
  return (w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(path, hf_model, arch: str, raw_types: dict[str, gguf.GGMLQuantizationType] = {}):
  """`raw_types` stores the named tensors as zero bytes of another quant type."""
  c = hf_model.config
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_vocab_size(c.vocab_size)
  tokens = ["<|endoftext|>", "<|im_end|>"] + [chr(ord("a") + i % 26) * (1 + i // 26)
                                               for i in range(c.vocab_size - 2)]
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tokens)
  writer.add_token_types([3, 3] + [1] * (c.vocab_size - 2))
  writer.add_token_merges(["a a", "b b"])
  writer.add_eos_token_id(1)
  if arch == "qwen3moe":
    writer.add_expert_count(c.num_experts)
    writer.add_expert_used_count(c.num_experts_per_tok)
    writer.add_expert_feed_forward_length(c.moe_intermediate_size)
    if not c.norm_topk_prob:  # llama.cpp renormalises unless told not to
      writer.add_expert_weights_norm(False)

  hf_names = {v[0]: v[1] for v in LAYER_TENSORS.values()}
  hf_global = {v[0]: v[1] for v in GLOBAL_TENSORS.values()}
  for name, tensor in hf_model.state_dict().items():
    if name == "lm_head.weight" and c.tie_word_embeddings:
      continue  # llama.cpp stores a tied head once, as token_embd
    array = tensor.detach().numpy().astype(np.float32)
    if name.endswith("mlp.experts.gate_up_proj"):  # stacked experts, [X, out, in] as numpy
      layer = name.split(".")[2]
      gate, up = np.split(array, 2, axis=1)
      writer.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", gate)
      writer.add_tensor(f"blk.{layer}.ffn_up_exps.weight", up)
      continue
    if name.endswith("mlp.experts.down_proj"):
      writer.add_tensor(f"blk.{name.split('.')[2]}.ffn_down_exps.weight", array)
      continue
    if name in hf_global:
      gguf_name = hf_global[name]
    else:
      layer, suffix = name.removeprefix("model.layers.").split(".", 1)
      gguf_name = f"blk.{layer}.{hf_names[suffix]}"
    if arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
      heads = c.num_attention_heads if "attn_q" in gguf_name else c.num_key_value_heads
      array = permute_rope_rows(array, heads)
    if gguf_name in raw_types:
      kind = raw_types[gguf_name]
      block, type_size = gguf.GGML_QUANT_SIZES[kind]
      zeros = np.zeros((array.shape[0], array.shape[1] // block * type_size), np.uint8)
      writer.add_tensor(gguf_name, zeros, raw_dtype=kind)
    else:
      writer.add_tensor(gguf_name, array)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
