"""The tiny target, DFlash drafter, optimizer and Draft-OPD steps and batches that the
multi-device checks share (the two-process run is compared with sharded_steps.py's
single-device run, so both must build exactly these)."""

import numpy as np

from draftopd_jax.models import ModelConfig, dflash
from draftopd_jax.models.drafters import DFlashDrafter
from draftopd_jax.opd import update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.training import trainer

CFG = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, qk_norm=True)
TARGET_SEED = 3
D_CFG = dflash.DFlashConfig.for_target(CFG, num_layers=2, block_size=4, mask_token_id=63)
# A Qwen3-MoE target of the same size: 8 experts, top 2, layer 1 dense.
MOE_CFG = CFG.replace(family="qwen3_moe", num_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=16, norm_topk_prob=True, mlp_only_layers=(1,))
MOE_D_CFG = dflash.DFlashConfig.for_target(MOE_CFG, num_layers=2, block_size=4, mask_token_id=63)
OPT = trainer.make_optimizer(1e-2, warmup_steps=1, total_steps=10)


def opd_step(target_cfg=CFG, drafter_cfg=D_CFG):
  return update_step.opd_step_fn(drafter=DFlashDrafter(drafter_cfg), target_cfg=target_cfg,
                                 optimizer=OPT,
                                 rollout=update_step.RolloutOptions(max_new_tokens=10),
                                 loss=LossOptions())


def opd_batches() -> list[tuple[np.ndarray, np.ndarray]]:
  """3 batches of 8 left-padded prompts of 6 tokens (the same in every process)."""
  rng = np.random.default_rng(0)
  mask = np.arange(6)[None] >= rng.integers(0, 4, (8, 1))
  return [(rng.integers(1, 60, (8, 6)).astype(np.int32), mask) for _ in range(3)]
