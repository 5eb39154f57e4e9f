"""Batched generation throughput: our jitted while_loop vs transformers `generate`.

The regeneration engine's figure of merit: SmolLM2-135M-Instruct, greedy, fp32 on CPU, batches of
HumanEval chat prompts (left-padded, the same tensors for both), a fixed number of new tokens per
row (EOS ignored, so both do the same work). For each batch size the two alternate run by run
after a warm-up and the medians are compared. The last line printed is JSON.

  python benchmarks/generation_throughput.py [--batches 1 16 64] [--runs 3] [--new_tokens 128]
"""

import argparse
import json

import torch
from side_by_side import chat_prompts, interleaved_medians, load_both

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import generate


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--new_tokens", type=int, default=128)
  args = parser.parse_args()

  model, hf = load_both()
  prompts = chat_prompts(model, max(args.batches))
  jax_rates, hf_rates = {}, {}
  for batch in args.batches:
    tokens, mask = pad_batch(prompts[:batch], model.tokenizer.pad_id, left=True)
    hf_tokens, hf_mask = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def run_jax() -> int:
      rows = generate(model.cfg, model.params, tokens, mask, max_new_tokens=args.new_tokens)
      return sum(len(r) for r in rows)

    def run_hf() -> int:
      with torch.no_grad():
        out = hf.generate(hf_tokens, attention_mask=hf_mask, do_sample=False,
                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                          pad_token_id=model.tokenizer.pad_id)
      return (out.shape[1] - tokens.shape[1]) * batch

    print(f"batch {batch}, prompt width {tokens.shape[1]}:", flush=True)
    medians = interleaved_medians({"jax": run_jax, "transformers": run_hf}, args.runs)
    jax_rates[batch], hf_rates[batch] = medians["jax"], medians["transformers"]

  lo, hi = min(args.batches), max(args.batches)
  print(json.dumps({
      "jax_tokens_per_s": {b: round(r, 1) for b, r in jax_rates.items()},
      "hf_tokens_per_s": {b: round(r, 1) for b, r in hf_rates.items()},
      f"scaling_b{hi}_over_b{lo}": round(jax_rates[hi] / jax_rates[lo], 2),
      f"ratio_vs_hf_b{hi}": round(jax_rates[hi] / hf_rates[hi], 2),
      "new_tokens": args.new_tokens, "runs": args.runs, "dtype": "float32",
      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
