"""Run with 8 fake CPU devices: the pod jobs lower on 8 devices with abstract arrays (nothing
allocated), and their rules split every big matrix:
* `configs/sft.py:qwen3_8b_pod` and `configs/opd.py:qwen3_8b_pod`, a Qwen3-8B target, fsdp=8;
* `configs/opd.py:qwen3_30b_a3b_pod`, the Qwen3-30B-A3B MoE target, expert=8 (the experts split
  by expert, everything else FSDP-style over the same axis).
Memory per device is computed from the shardings (shard shapes x dtype sizes), not compiled.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/pod_config.py
"""

import pathlib
import runpy

import jax
import numpy as np

from draftopd_jax.decoding.engine import buffer_length
from draftopd_jax.io.hf import config_from_hf
from draftopd_jax.models import KVCache, dflash, param_shapes
from draftopd_jax.models.drafters import DFlashDrafter
from draftopd_jax.opd import update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.parallel import sharding
from draftopd_jax.sampling import SamplingConfig
from draftopd_jax.sft import dflash_loss
from draftopd_jax.training import trainer

assert jax.device_count() == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
get_sft_config = runpy.run_path(str(CONFIGS / "sft.py"))["get_config"]
get_opd_config = runpy.run_path(str(CONFIGS / "opd.py"))["get_config"]
# The published config.json of each target (the fields that matter).
QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 4096,
    "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
    "max_position_embeddings": 40960, "tie_word_embeddings": False}
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 151936, "hidden_size": 2048,
    "intermediate_size": 6144, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
    "max_position_embeddings": 40960, "tie_word_embeddings": False, "num_experts": 128,
    "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": True,
    "decoder_sparse_step": 1, "mlp_only_layers": []}


def per_device_bytes(mesh, rules, tree, shardings=None) -> tuple[int, int]:
  shardings = shardings or sharding.tree_shardings(mesh, rules, tree)
  total = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  local = sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
              for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))
  return int(total), int(local)


def report(name: str, total: int, local: int) -> None:
  print(f"{name}: {total / 2**30:.2f} GiB, {local / 2**30:.2f} GiB per device")


def lower_pod(name: str, hf_config: dict, split_ways: int) -> None:
  """Prints memory per device and lowers the pod's steps; the 8B pod's SFT step too."""
  opd_config = get_opd_config(name)
  config = opd_config.warmup
  target_cfg = config_from_hf(hf_config, dtype=config.dtype)
  d = config.drafter
  drafter_cfg = dflash.DFlashConfig.for_target(target_cfg, num_layers=d.num_layers,
                                               block_size=d.block_size,
                                               mask_token_id=d.mask_token_id)
  assert d.mask_token_id < target_cfg.vocab_size
  mesh, rules = sharding.make_mesh(**opd_config.mesh), opd_config.sharding_rules
  t = config.train
  optimizer = trainer.make_optimizer(t.learning_rate, t.warmup_steps, t.steps)
  drafter_params = jax.eval_shape(lambda: dflash.init_params(drafter_cfg))
  state = jax.eval_shape(lambda p: trainer.init_state(p, optimizer, 0), drafter_params)
  target = param_shapes(target_cfg)
  print(f"{name}: mesh {dict(mesh.shape)}")
  for part, tree in (("target", target), ("train state", state)):
    total, local = per_device_bytes(mesh, rules, tree)
    report(f"{name} {part}", total, local)
    assert local < 1.01 * total / split_ways + 2**20, f"{part} is not split {split_ways} ways"
  r = opd_config.rollout
  rows = r.batch_size  # the rollout batch, split over the batch axes
  cache = jax.eval_shape(lambda: KVCache.create(target_cfg, rows, buffer_length(
      opd_config.data.max_prompt_tokens, r.max_new_tokens, d.block_size)))
  batch_split = jax.tree.map(lambda _: sharding.batch_sharding(mesh, rules), cache)
  report(f"{name} rollout KV cache ({rows} rows)", *per_device_bytes(mesh, rules, cache,
                                                                      batch_split))

  if name == "qwen3_8b_pod":  # the SFT step of the same pod
    step_fn = dflash_loss.step_fn(cfg=drafter_cfg, target_cfg=target_cfg, optimizer=optimizer,
                                  num_anchors=t.num_anchors, gamma=t.gamma, distill=False)
    tokens = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len), np.int32)
    mask = jax.ShapeDtypeStruct(tokens.shape, np.bool_)
    rows_sharding = sharding.batch_sharding(mesh, rules)
    lowered = jax.jit(step_fn, in_shardings=(sharding.tree_shardings(mesh, rules, state),
                                             sharding.tree_shardings(mesh, rules, target),
                                             rows_sharding, rows_sharding)
                      ).lower(state, target, tokens, mask)
    print("lowered:", len(lowered.as_text()) // 1000, "k characters of StableHLO")

  # The Draft-OPD update step: rollout, replay and update.
  opd_fn = update_step.opd_step_fn(
      drafter=DFlashDrafter(drafter_cfg), target_cfg=target_cfg, optimizer=optimizer,
      rollout=update_step.RolloutOptions(max_new_tokens=r.max_new_tokens, eos_ids=(151645,),
                                         sampling=SamplingConfig(temperature=r.temperature),
                                         rollouts_per_update=2),
      loss=LossOptions(**opd_config.loss))
  prompts = jax.ShapeDtypeStruct((16, opd_config.data.max_prompt_tokens), np.int32)
  prompt_mask = jax.ShapeDtypeStruct(prompts.shape, np.bool_)
  rows_sharding = sharding.batch_sharding(mesh, rules)
  opd_lowered = jax.jit(opd_fn, in_shardings=(sharding.tree_shardings(mesh, rules, state),
                                              sharding.tree_shardings(mesh, rules, target),
                                              rows_sharding, rows_sharding)
                        ).lower(state, target, prompts, prompt_mask)
  print(f"{name} opd lowered:", len(opd_lowered.as_text()) // 1000, "k characters of StableHLO")


lower_pod("qwen3_8b_pod", QWEN3_8B, split_ways=8)
lower_pod("qwen3_30b_a3b_pod", QWEN3_30B_A3B, split_ways=8)
