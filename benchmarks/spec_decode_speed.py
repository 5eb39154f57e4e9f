"""Speculative decoding speed on SmolLM2-135M-Instruct with an oracle drafter (batch 1, fp32, CPU).

The oracle proposes the target's own greedy continuation, so every block is accepted (tau = K)
and what is measured is the engine: the target's K-token verify pass and the loop around it.
All settings run interleaved on the same prompts; figures are medians over runs.

* step_cost_ratio c(K): one K-token target forward on a cache / one 1-token forward. No engine
  can beat K / c(K) with an oracle: that is the hardware ceiling.
* speedup: speculative decode tokens/s / autoregressive decode tokens/s (same loop, K = 1),
  decode phase only (prefill excluded).
* efficiency = speedup / tau; ceiling_fraction = speedup / (tau / c(K)).

  python benchmarks/spec_decode_speed.py [--runs 5] [--new_tokens 128] [--ks 4 8 16] \
      [--drafter CHECKPOINT_DIR]   # also measure a saved drafter (its own tau)

The last line printed is JSON.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding import engine
from draftopd_jax.io import load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter
from draftopd_jax.jobs.eval import timed_decode
from draftopd_jax.models import forward
from draftopd_jax.models.drafters import Autoregressive, Oracle
from draftopd_jax.sampling import SamplingConfig

PROMPTS = ["Write a Python function that checks whether a string is a palindrome.",
           "Explain in three sentences why the sky is blue.",
           "List five fruits and their colours."]


def decode_rate(model, ids, drafter, drafter_params, new_tokens):
  """Decode-phase tokens/s and the final state of one batch-1 run (EOS ignored)."""
  seconds, generated, state = timed_decode(model, np.asarray([ids], np.int32),
                                           np.ones((1, len(ids)), bool), drafter, drafter_params,
                                           new_tokens, eos_ids=())
  return generated / seconds, state


class StepTimer:
  """Times a k-token target forward on top of a prefilled cache, the cache updated in place
  (donated) as inside the decode loop. Call `sample()` between decode runs, so the step costs
  are measured interleaved with everything else."""

  def __init__(self, model, prompt_len: int, ks: list[int]):
    self.model, self.ks, self.times = model, ks, {k: [] for k in ks}
    # The layers split once and run unrolled, as in the decoding loop (a lone forward scans them).
    layers = engine.layer_params(model.cfg, model.params)
    self.fn = jax.jit(lambda p, t, pos, c: forward(model.cfg, p, t, pos, c, layer_params=layers),
                      donate_argnums=3)
    self.caches = {}
    for k in ks:
      state = engine.prefill(model.cfg, model.params, Autoregressive(), None,
                             np.ones((1, prompt_len), np.int32), np.ones((1, prompt_len), bool),
                             jax.random.key(0), max_new_tokens=128, sampling=SamplingConfig(),
                             eos_ids=())
      self.caches[k] = self._step(k, state.cache, prompt_len)[1]  # compile

  def _step(self, k, cache, prompt_len):
    tokens, positions = jnp.ones((1, k), jnp.int32), prompt_len + jnp.arange(k)[None]
    start = time.perf_counter()
    out = jax.block_until_ready(self.fn(self.model.params, tokens, positions, cache))
    return time.perf_counter() - start, out.cache

  def sample(self, prompt_len: int, reps: int = 5) -> None:
    for _ in range(reps):
      for k in self.ks:
        seconds, self.caches[k] = self._step(k, self.caches[k], prompt_len)
        self.times[k].append(seconds)

  def ratio(self, k: int) -> float:
    return statistics.median(self.times[k]) / statistics.median(self.times[1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
  parser.add_argument("--drafter", help="a drafter checkpoint directory to measure as well")
  args = parser.parse_args()

  model = load_model("smollm2-135m-instruct")
  prompts = encode_prompts(model, PROMPTS, chat_template=True)
  # The oracle's proposals: each prompt's greedy continuation, computed once.
  oracles = []
  for ids in prompts:
    _, state = decode_rate(model, ids, Autoregressive(), None, args.new_tokens)
    oracles.append(jnp.pad(state.tokens_BxS, ((0, 0), (0, max(args.ks)))))

  settings = [("autoregressive", 1)] + [(f"oracle_k{k}", k) for k in args.ks]
  trained = load_drafter(args.drafter, model.cfg) if args.drafter else None
  if trained:
    settings.append(("drafter", trained[0].block_size))
  rates = {name: [] for name, _ in settings}
  taus = {name: [] for name, _ in settings}
  prompt_len = int(np.mean([len(p) for p in prompts]))
  step_timer = StepTimer(model, prompt_len, sorted({k for _, k in settings}))
  for run in range(args.runs + 1):  # run 0 is the warm-up (compilation)
    for name, k in settings:
      for ids, oracle in zip(prompts, oracles):
        if name == "drafter":
          drafter, params = trained
        else:
          drafter, params = (Autoregressive(), None) if k == 1 else (Oracle(block_size=k), oracle)
        rate, state = decode_rate(model, ids, drafter, params, args.new_tokens)
        if run:
          steps = int(state.trace.num_steps_B[0])
          rates[name].append(rate)
          taus[name].append(float(np.mean(np.asarray(state.trace.accepted_BxN[0, :steps]) + 1)))
    step_timer.sample(prompt_len)
    if run:
      print(f"run {run}: " + ", ".join(f"{n} {statistics.median(r[-len(prompts):]):.1f} tok/s"
                                       for n, r in rates.items()), flush=True)

  ar_rate = statistics.median(rates["autoregressive"])
  rows = []
  for name, k in settings[1:]:
    c = step_timer.ratio(k)
    tau = statistics.mean(taus[name])
    speedup = statistics.median(rates[name]) / ar_rate
    rows.append({"setting": name, "k": k, "tau": round(tau, 3), "step_cost_ratio": round(c, 3),
                 "speedup": round(speedup, 3), "efficiency": round(speedup / tau, 3),
                 "ceiling_fraction": round(speedup / (tau / c), 3),
                 "tokens_per_s": round(statistics.median(rates[name]), 1)})
    print(f"K={k}: tau {tau:.2f}, c(K) {c:.2f}, speedup {speedup:.2f}x, "
          f"ceiling fraction {rows[-1]['ceiling_fraction']:.2f}")
  print(json.dumps({"autoregressive_tokens_per_s": round(ar_rate, 1), "runs": args.runs,
                    "new_tokens": args.new_tokens, "rows": rows}))


if __name__ == "__main__":
  main()
