"""What one speculative step costs at batch 1, in autoregressive steps: the bar a drafter's
acceptance must clear before it pays.

SmolLM2-135M-Instruct, fp32, batch 1, 64 new tokens from a 100-token prompt. Each setting decodes
with an untrained DFlash drafter (K = 8, 5 taps) of the given depth, so each step commits about
one token and the time per step is the cost of a verify pass plus a draft. Speedup at acceptance
length tau is then tau / step_cost (before the loop's own overhead). Also timed: the LM-head dot
(`[M, 576] x [576, 49152]`) at M = 1 and 8, the single largest matmul of a draft or verify pass.
Settings alternate run by run; medians.

  python benchmarks/drafter_step_cost.py [--runs 3] [--layers 1,2,5]

The last line printed is JSON.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from draftopd_jax.decoding import engine
from draftopd_jax.io import load_model
from draftopd_jax.models import dflash
from draftopd_jax.models.drafters import DFlashDrafter

NEW_TOKENS = 64


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--layers", default="1,2,5")
  args = parser.parse_args()
  model = load_model("smollm2-135m-instruct")
  prompt = np.random.default_rng(0).integers(100, 40_000, (1, 100)).astype(np.int32)
  mask = np.ones_like(prompt, bool)
  settings = {"autoregressive": {}}
  for layers in map(int, args.layers.split(",")):
    cfg = dflash.DFlashConfig.for_target(model.cfg, num_layers=layers, block_size=8,
                                         mask_token_id=0, num_taps=5)
    settings[f"dflash_{layers}_layers"] = dict(drafter=DFlashDrafter(cfg),
                                               drafter_params=dflash.init_params(cfg))

  def ms_per_step(kwargs) -> float:
    start = time.perf_counter()
    state = engine.run(model.cfg, model.params, prompt, mask, max_new_tokens=NEW_TOKENS,
                       **kwargs)
    jax.block_until_ready(state.tokens_BxS)
    return 1000 * (time.perf_counter() - start) / int(state.step)

  times = {name: [] for name in settings}
  for run in range(args.runs + 1):  # run 0: compilation
    for name, kwargs in settings.items():
      ms = ms_per_step(kwargs)
      if run:
        times[name].append(ms)
  step_ms = {name: statistics.median(t) for name, t in times.items()}
  ar = step_ms["autoregressive"]
  for name, ms in step_ms.items():
    print(f"{name}: {ms:.1f} ms per step, {ms / ar:.2f} autoregressive steps")

  embedding = model.params["embed"]["embedding"]  # [V, D], the tied LM head
  head = jax.jit(lambda x, w: x @ w.T)
  dot_ms = {}
  for rows in (1, 8):
    x = jnp.ones((rows, embedding.shape[1]), embedding.dtype)
    head(x, embedding).block_until_ready()
    start = time.perf_counter()
    for _ in range(20):
      head(x, embedding).block_until_ready()
    dot_ms[rows] = 1000 * (time.perf_counter() - start) / 20
  print(f"LM-head dot: {dot_ms[1]:.1f} ms for 1 row, {dot_ms[8]:.1f} ms for 8 rows")
  print(json.dumps({"ms_per_step": {k: round(v, 1) for k, v in step_ms.items()},
                    "step_cost": {k: round(v / ar, 2) for k, v in step_ms.items()},
                    "lm_head_dot_ms": {str(k): round(v, 2) for k, v in dot_ms.items()}}))


if __name__ == "__main__":
  main()
