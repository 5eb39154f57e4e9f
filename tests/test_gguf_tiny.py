"""The GGUF reader on tiny files written like llama.cpp writes them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import tiny_hf_model
from gguf_writer import write_tiny_gguf

from draftopd_jax.errors import UserError
from draftopd_jax.io import load_model, zoo
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


def test_converted_params_are_cached_by_checksum(tmp_path, monkeypatch):
  """A GGUF is converted once per content: a second load reads the cache, a changed byte makes a
  new entry and is never served stale."""
  import gguf

  path, cache = tmp_path / "m.gguf", tmp_path / "cache"
  write_tiny_gguf(path, tiny_hf_model("qwen3", False), "qwen3")
  conversions = []
  real_load_gguf = zoo.load_gguf
  monkeypatch.setattr(zoo, "load_gguf", lambda *a, **k: conversions.append(1) or real_load_gguf(*a, **k))

  first = load_model(str(path), cache_dir=cache)
  second = load_model(str(path), cache_dir=cache)
  assert len(conversions) == 1 and len(list(cache.iterdir())) == 1
  jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
  assert second.tokenizer.encode("aab ba") == first.tokenizer.encode("aab ba")
  assert (second.tokenizer.eos_ids, second.tokenizer.chat_template) == (
      first.tokenizer.eos_ids, first.tokenizer.chat_template)

  # Change one byte of the final norm's weights: a new key, never stale.
  [norm] = [t for t in gguf.GGUFReader(path).tensors if t.name == "output_norm.weight"]
  data = bytearray(path.read_bytes())
  data[norm.data_offset + 1] ^= 0xFF
  path.write_bytes(bytes(data))
  third = load_model(str(path), cache_dir=cache)
  assert len(conversions) == 2 and len(list(cache.iterdir())) == 2
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), first.params, third.params)
  assert any(jax.tree.leaves(changed))
