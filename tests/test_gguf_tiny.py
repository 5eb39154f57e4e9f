"""The GGUF reader on tiny files written like llama.cpp writes them."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import tiny_hf_model
from gguf_writer import write_tiny_gguf

from draftopd_jax.errors import UserError
from draftopd_jax.io.gguf_file import load_gguf
from draftopd_jax.io.tokenizer import Tokenizer
from draftopd_jax.models import KVCache, forward


@pytest.mark.parametrize("family,tie", [("llama", True), ("llama", False), ("qwen2", False),
                                        ("qwen3", True), ("qwen3_moe", False), ("qwen3_moe", True)])
def test_gguf_params_give_transformers_logits(tmp_path, family, tie):
  hf = tiny_hf_model(family, tie)
  write_tiny_gguf(tmp_path / "m.gguf", hf, family.replace("_", ""))  # llama.cpp says qwen3moe
  cfg, params, meta = load_gguf(tmp_path / "m.gguf")
  assert (cfg.family, cfg.tie_embeddings, cfg.qkv_bias, cfg.qk_norm) == (
      family, tie, family == "qwen2", family.startswith("qwen3"))
  assert cfg.sparse_layers == tuple(hf.model.layers[i].mlp.__class__.__name__.endswith("MoeBlock")
                                    for i in range(cfg.num_layers))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
  out = forward(cfg, params, jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(16), (2, 16)),
                KVCache.create(cfg, 2, 16))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(out.logits_BxTxV, ref, atol=1e-4, rtol=0)
  assert Tokenizer.from_gguf_metadata(meta).eos_ids == (1,)


def test_unsupported_quant_type_is_a_clear_error(tmp_path):
  import gguf

  hf = tiny_hf_model("llama", True)
  write_tiny_gguf(tmp_path / "m.gguf", hf, "llama",
                  raw_types={"blk.1.ffn_up.weight": gguf.GGMLQuantizationType.Q8_1})
  with pytest.raises(UserError, match="blk.1.ffn_up.weight.*Q8_1"):
    load_gguf(tmp_path / "m.gguf")
