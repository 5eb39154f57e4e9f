"""Run with 8 fake CPU devices (sharded_steps.py runs it in its process): regeneration with each
batch's rows split over the devices (as `data/regeneration.py` does on a single process) gives
the same greedy tokens as one device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/sharded_regeneration.py
Prints "regeneration split over 8 devices: identical" and fails otherwise.
"""

import dataclasses
import types

import jax
import numpy as np
from tqdm import tqdm

from draftopd_jax.data.corpus import CorpusSettings
from draftopd_jax.data.regeneration import generate_shard, rows_sharding
from draftopd_jax.io import LoadedModel
from draftopd_jax.models import ModelConfig, init_params
from draftopd_jax.parallel import sharding

assert jax.device_count() == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64)
tokenizer = types.SimpleNamespace(pad_id=0, eos_ids=(1,))
model = LoadedModel(CFG, init_params(CFG, seed=5), tokenizer, "random")
settings = CorpusSettings(split="train", heldout_fraction=0.0, reserve_fraction=0.0,
                          max_prompt_tokens=16, response_tokens=12, temperature=0.0,
                          dtype="float32", shard_size=10)
rng = np.random.default_rng(0)
prompts = [rng.integers(2, 64, rng.integers(3, 16)).tolist() for _ in range(10)]

split = rows_sharding()
assert split is not None and split.num_devices == 8
replicated = dataclasses.replace(model, params=jax.device_put(model.params,
                                                           sharding.replicated(split.mesh)))
# Of batches of 8 (8 and 2 rows) the first is split, one row a device; batches of 3 (3, 3, 3, 1)
# run whole on every device.
for batch in (8, 3):
  one = generate_shard(model, prompts, settings, batch, False, tqdm(disable=True), seed=0)
  two = generate_shard(replicated, prompts, settings, batch, False, tqdm(disable=True), seed=0,
                       split=split)
  assert one == two, (batch, one, two)
print("regeneration split over 8 devices: identical")
