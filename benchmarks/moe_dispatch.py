"""MoE forward tokens/s on the CPU by dispatch ("dense": every expert on every token, mixed by the
gates; "ragged": only the routed (token, expert) pairs, `jax.lax.ragged_dot`), at small scale.

  python benchmarks/moe_dispatch.py

A small Qwen3-MoE (4 layers, width 256, top 2) with 8 and with 32 experts, whole-sequence
forwards of 1 x 64 (a verify-sized call) and 8 x 256 tokens; runs alternate between the two
dispatches (the machine is noisy) and the medians of 7 runs are printed with their ratio.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from draftopd_jax.models import ModelConfig, forward_sequences, init_params


def config(num_experts: int, dispatch: str) -> ModelConfig:
  return ModelConfig(family="qwen3_moe", vocab_size=1024, hidden_size=256, num_layers=4,
                     num_heads=4, num_kv_heads=2, head_dim=64, intermediate_size=512,
                     qk_norm=True, num_experts=num_experts, num_experts_per_tok=2,
                     moe_intermediate_size=128, norm_topk_prob=True, moe_dispatch=dispatch)


def main() -> None:
  print(f"{'experts':>7} {'tokens':>9} {'dense tok/s':>12} {'ragged tok/s':>13} {'ragged/dense':>13}")
  for num_experts in (8, 32):
    params = init_params(config(num_experts, "dense"))
    for batch, length in ((1, 64), (8, 256)):
      tokens = jnp.asarray(np.random.default_rng(0).integers(0, 1024, (batch, length)), jnp.int32)
      runs = {}
      for dispatch in ("dense", "ragged"):
        cfg = config(num_experts, dispatch)
        runs[dispatch] = (jax.jit(lambda p, t, cfg=cfg: forward_sequences(cfg, p, t).logits_BxTxV), [])
        jax.block_until_ready(runs[dispatch][0](params, tokens))  # compile
      for _ in range(7):
        for fn, times in runs.values():
          start = time.perf_counter()
          jax.block_until_ready(fn(params, tokens))
          times.append(time.perf_counter() - start)
      rate = {d: batch * length / statistics.median(t) for d, (_, t) in runs.items()}
      print(f"{num_experts:>7} {f'{batch}x{length}':>9} {rate['dense']:>12.0f} "
            f"{rate['ragged']:>13.0f} {rate['ragged'] / rate['dense']:>13.2f}")


if __name__ == "__main__":
  main()
