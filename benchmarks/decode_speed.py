"""Decode speed: our jitted while_loop vs transformers `generate`, same target, same prompt.

SmolLM2-135M-Instruct, batch 1, greedy, fp32 on CPU, a fixed number of new tokens (EOS ignored so
both do the same work). Runs alternate after a warm-up and the medians are compared. The last
line printed is JSON.

  python benchmarks/decode_speed.py [--runs 5] [--new_tokens 128]
"""

import argparse
import json

import numpy as np
import torch
from side_by_side import interleaved_medians, load_both

from draftopd_jax.decoding import generate

PROMPT = "Write a Python function that checks whether a string is a palindrome."


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--new_tokens", type=int, default=128)
  args = parser.parse_args()

  model, hf = load_both()
  ids = model.tokenizer.encode(model.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]))
  tokens, mask = np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)
  hf_input = torch.tensor([ids])

  def run_jax() -> int:
    produced = len(generate(model.cfg, model.params, tokens, mask, max_new_tokens=args.new_tokens)[0])
    assert produced == args.new_tokens, produced
    return produced

  def run_hf() -> int:
    with torch.no_grad():
      out = hf.generate(hf_input, attention_mask=torch.ones_like(hf_input), do_sample=False,
                        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    return out.shape[1] - len(ids)

  medians = interleaved_medians({"jax": run_jax, "transformers": run_hf}, args.runs)
  jax_median, hf_median = medians["jax"], medians["transformers"]
  print(json.dumps({"jax_tokens_per_s": round(jax_median, 2), "hf_tokens_per_s": round(hf_median, 2),
                    "ratio": round(jax_median / hf_median, 3), "new_tokens": args.new_tokens,
                    "runs": args.runs, "batch": 1, "dtype": "float32", "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
