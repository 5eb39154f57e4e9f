"""Decode speed: our jitted while_loop vs transformers `generate`, same target, same prompts.

SmolLM2-135M-Instruct, batch 1, greedy, fp32 on CPU, a fixed number of new tokens (EOS ignored so
both do the same work). Runs alternate A/B after a warm-up (this machine is noisy) and the medians
are compared. The last line printed is JSON.

  python benchmarks/decode_speed.py [--runs 5] [--new_tokens 128]
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from draftopd_jax.decoding import generate
from draftopd_jax.io import load_model
from draftopd_jax.io.zoo import resolve

PROMPT = "Write a Python function that checks whether a string is a palindrome."


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--new_tokens", type=int, default=128)
  args = parser.parse_args()

  model = load_model("smollm2-135m-instruct")
  ids = model.tokenizer.encode(model.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]))
  path = resolve("smollm2-135m-instruct")
  hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  tokens, mask = np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)
  hf_input = torch.tensor([ids])

  def run_jax() -> int:
    return len(generate(model.cfg, model.params, tokens, mask, max_new_tokens=args.new_tokens)[0])

  def run_hf() -> int:
    with torch.no_grad():
      out = hf.generate(hf_input, attention_mask=torch.ones_like(hf_input), do_sample=False,
                        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    return out.shape[1] - len(ids)

  def timed(fn) -> float:
    start = time.perf_counter()
    produced = fn()
    seconds = time.perf_counter() - start
    assert produced == args.new_tokens, produced
    return produced / seconds

  run_jax(), run_hf()  # warm-up: compilation, allocator, caches
  jax_rates, hf_rates = [], []
  for i in range(args.runs):
    jax_rates.append(timed(run_jax))
    hf_rates.append(timed(run_hf))
    print(f"run {i + 1}: jax {jax_rates[-1]:.1f} tok/s, transformers {hf_rates[-1]:.1f} tok/s",
          flush=True)
  jax_median, hf_median = statistics.median(jax_rates), statistics.median(hf_rates)
  print(json.dumps({"jax_tokens_per_s": round(jax_median, 2), "hf_tokens_per_s": round(hf_median, 2),
                    "ratio": round(jax_median / hf_median, 3), "new_tokens": args.new_tokens,
                    "runs": args.runs, "batch": 1, "dtype": "float32", "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
