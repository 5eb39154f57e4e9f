"""Run with 8 fake CPU devices: the `configs/sft.py:qwen3_8b_pod` job lowers for a Qwen3-8B target
on an fsdp=8 mesh (abstract arrays, nothing allocated), and its rules split every big matrix.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/pod_config.py
"""

import pathlib
import runpy

import jax
import numpy as np

from draftopd_jax.io.hf import config_from_hf
from draftopd_jax.models import dflash, param_shapes
from draftopd_jax.parallel import sharding
from draftopd_jax.sft import dflash_loss
from draftopd_jax.training import trainer

assert jax.device_count() == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
CONFIG_FILE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "sft.py"
config = runpy.run_path(str(CONFIG_FILE))["get_config"]("qwen3_8b_pod")
# Qwen3-8B's config.json (the fields that matter).
target_cfg = config_from_hf({
    "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 4096,
    "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
    "max_position_embeddings": 40960, "tie_word_embeddings": False}, dtype=config.dtype)
d = config.drafter
drafter_cfg = dflash.DFlashConfig.for_target(target_cfg, num_layers=d.num_layers,
                                             block_size=d.block_size,
                                             mask_token_id=d.mask_token_id)
assert d.mask_token_id < target_cfg.vocab_size
mesh = sharding.make_mesh(**config.mesh)  # data=-1 takes 8 / fsdp=8 = 1
t = config.train
optimizer = trainer.make_optimizer(t.learning_rate, t.warmup_steps, t.steps)
step_fn = dflash_loss.step_fn(cfg=drafter_cfg, target_cfg=target_cfg, optimizer=optimizer,
                                 num_anchors=t.num_anchors, gamma=t.gamma, distill=False)
drafter_params = jax.eval_shape(lambda: dflash.init_params(drafter_cfg))
state = jax.eval_shape(lambda p: trainer.init_state(p, optimizer, 0), drafter_params)
target = param_shapes(target_cfg)
rules = config.sharding_rules


def per_device_bytes(tree) -> tuple[int, int]:
  shardings = sharding.tree_shardings(mesh, rules, tree)
  total = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  local = sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
              for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))
  return int(total), int(local)


for name, tree in (("target", target), ("train state", state)):
  total, local = per_device_bytes(tree)
  print(f"{name}: {total / 2**30:.2f} GiB, {local / 2**30:.2f} GiB per device")
  assert local < 1.01 * total / 8 + 2**20, f"{name} is not split 8 ways"

rows = config.train.batch_size // 8  # one data replica's share on this 8-device slice
tokens = jax.ShapeDtypeStruct((rows * 8, config.data.seq_len), np.int32)
mask = jax.ShapeDtypeStruct((rows * 8, config.data.seq_len), np.bool_)
step = jax.jit(step_fn, in_shardings=(sharding.tree_shardings(mesh, rules, state),
                                      sharding.tree_shardings(mesh, rules, target),
                                      sharding.batch_sharding(mesh, rules),
                                      sharding.batch_sharding(mesh, rules)))
lowered = step.lower(state, target, tokens, mask)
print("lowered:", len(lowered.as_text()) // 1000, "k characters of StableHLO")

# The Draft-OPD pod job on the same mesh: rollout, replay and update lower for the 8B target.
from draftopd_jax.models.drafters import DFlashDrafter  # noqa: E402
from draftopd_jax.opd import update_step  # noqa: E402
from draftopd_jax.opd.losses import LossOptions  # noqa: E402
from draftopd_jax.sampling import SamplingConfig  # noqa: E402

opd_config = runpy.run_path(str(CONFIG_FILE.with_name("opd.py")))["get_config"]("qwen3_8b_pod")
r = opd_config.rollout
opd_fn = update_step.opd_step_fn(
    drafter=DFlashDrafter(drafter_cfg), target_cfg=target_cfg, optimizer=optimizer,
    rollout=update_step.RolloutOptions(max_new_tokens=r.max_new_tokens, eos_ids=(151645,),
                                    sampling=SamplingConfig(temperature=r.temperature),
                                    rollouts_per_update=2),
    loss=LossOptions(**opd_config.loss))
prompts = jax.ShapeDtypeStruct((16, opd_config.data.max_prompt_tokens), np.int32)
prompt_mask = jax.ShapeDtypeStruct((16, opd_config.data.max_prompt_tokens), np.bool_)
rows = sharding.batch_sharding(mesh, rules)
opd_lowered = jax.jit(opd_fn, in_shardings=(sharding.tree_shardings(mesh, rules, state),
                                            sharding.tree_shardings(mesh, rules, target),
                                            rows, rows)).lower(state, target, prompts, prompt_mask)
print("opd lowered:", len(opd_lowered.as_text()) // 1000, "k characters of StableHLO")
