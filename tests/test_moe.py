"""Qwen3-MoE specifics: both Hugging Face expert layouts, and the config's checks. (Parity with
transformers is in test_parity_tiny.py, GGUF import in test_gguf_tiny.py.)"""

import json

import jax
import numpy as np
import pytest
from conftest import tiny_hf_model
from safetensors.numpy import save_file

from draftopd_jax.errors import UserError
from draftopd_jax.io.hf import load_hf_folder
from draftopd_jax.models import ModelConfig, dflash, eagle3


def test_fused_and_per_expert_layouts_give_the_same_params(tmp_path):
  """save_pretrained writes one tensor per expert (the published checkpoints' layout); a model
  in memory, and checkpoints saved as it is, hold the fused [X, 2J, D] / [X, D, J] tensors."""
  hf = tiny_hf_model("qwen3_moe", False)
  hf.save_pretrained(tmp_path / "per_expert")
  fused = {name: t.detach().numpy().copy() for name, t in hf.state_dict().items()}
  assert "model.layers.0.mlp.experts.gate_up_proj" in fused
  (tmp_path / "fused").mkdir()
  save_file(fused, tmp_path / "fused" / "model.safetensors")
  (tmp_path / "fused" / "config.json").write_text((tmp_path / "per_expert" / "config.json").read_text())
  _, per_expert_params = load_hf_folder(tmp_path / "per_expert")
  cfg, fused_params = load_hf_folder(tmp_path / "fused")
  assert jax.tree.structure(per_expert_params) == jax.tree.structure(fused_params)
  jax.tree.map(np.testing.assert_array_equal, per_expert_params, fused_params)
  assert cfg.layer_stacks == {"layers": (0, 2), "dense_layers": (1,)}
  assert fused_params["layers"]["mlp"]["gate_XxDxJ"].shape == (2, 8, 48, 32)

  del fused["model.layers.2.mlp.experts.down_proj"]
  save_file(fused, tmp_path / "fused" / "model.safetensors")
  with pytest.raises(UserError, match=r"no tensor 'model\.layers\.2\.mlp\.experts\.0\.down_proj"):
    load_hf_folder(tmp_path / "fused")


def test_config_checks_and_round_trip():
  cfg = ModelConfig(family="qwen3_moe", vocab_size=97, hidden_size=48, num_layers=4, num_heads=6,
                    num_kv_heads=2, head_dim=16, intermediate_size=80, qk_norm=True,
                    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                    decoder_sparse_step=2, mlp_only_layers=(3,))
  assert cfg.sparse_layers == (False, True, False, False)
  assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  # Drafters of a MoE target stay dense.
  assert dflash.DFlashConfig.for_target(cfg, mask_token_id=0).layer.num_experts == 0
  assert eagle3.Eagle3Config.for_target(cfg, block_size=4, draft_vocab_size=32).layer == (
      cfg.dense().replace(num_layers=1, qk_norm=False))
  with pytest.raises(ValueError, match="num_experts_per_tok=9 must be in 1..8"):
    cfg.replace(num_experts_per_tok=9)
  with pytest.raises(ValueError, match="unknown moe_dispatch 'sorted'"):
    cfg.replace(moe_dispatch="sorted")
