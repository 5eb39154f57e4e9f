"""End-to-end batch-1 speedup of trained drafters over autoregressive decoding and over
transformers `generate`, same target (SmolLM2-135M-Instruct, fp32) and same held-out prompts.

Every prompt is decoded greedily for exactly --new_tokens tokens (EOS ignored, so every setting
does the same work) by: transformers `generate`; our autoregressive loop; speculative decoding
with each drafter. Wall clock covers prefill and decode. Settings alternate prompt by prompt over
--runs rounds after a warm-up round (compilation), and the medians of each setting's total time
per round are compared. Speculative outputs are checked to equal the autoregressive ones.
With --blocks, each drafter is also measured verifying only its first K-1 proposals per step
(`Truncated`), for each K listed.

  python benchmarks/drafter_speedup.py --drafter sft=runs/paper/plateau/drafter \
      --drafter opd=runs/paper/opd_s0/drafter [--prompts_per_set 2] [--new_tokens 64] [--runs 2]
  python benchmarks/drafter_speedup.py --drafter shipped=smollm2-135m-instruct-dflash \
      --blocks 2,3 --new_tokens 128

The last line printed is JSON.
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from draftopd_jax.data import prompts
from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding import engine
from draftopd_jax.io import load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter
from draftopd_jax.io.zoo import resolve
from draftopd_jax.models.drafters import Autoregressive, Truncated
from draftopd_jax.sampling import SamplingConfig

SETS = ("humaneval", "mtbench", "sharegpt")


def ours(model, ids: list[int], drafter, params, new_tokens: int) -> tuple[float, list[int], list]:
  """(seconds, new tokens, accepted-per-step) of one batch-1 prefill + decode."""
  tokens, mask = np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)
  statics = dict(max_new_tokens=new_tokens, sampling=SamplingConfig(), eos_ids=())
  start = time.perf_counter()
  state = engine.prefill(model.cfg, model.params, drafter, params, tokens, mask,
                         jax.random.key(0), **statics)
  state = engine.decode(model.cfg, model.params, drafter, params, state, np.int32(new_tokens),
                        **statics)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  steps = int(state.trace.num_steps_B[0])
  return (seconds, engine.new_tokens(state)[0][:new_tokens],
          np.asarray(state.trace.accepted_BxN[0, :steps]).tolist())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--drafter", action="append", default=[], metavar="NAME=DIR",
                      help="a drafter checkpoint to measure (repeatable)")
  parser.add_argument("--prompts_per_set", type=int, default=2)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--runs", type=int, default=2)
  parser.add_argument("--blocks", default="", help="truncated block sizes to measure too, e.g. 2,3")
  args = parser.parse_args()
  if not args.drafter or any("=" not in d for d in args.drafter):
    parser.error("give at least one --drafter NAME=DIR")
  blocks = [int(k) for k in args.blocks.split(",") if k]

  model = load_model("smollm2-135m-instruct")
  drafters = {name: load_drafter(path, model.cfg, model.tokenizer)
              for name, path in (d.split("=", 1) for d in args.drafter)}
  drafters |= {f"{name}_K{k}": (Truncated(drafter, k), params)
               for name, (drafter, params) in list(drafters.items()) for k in blocks}
  texts = [t for s in SETS for t in prompts.eval_prompts(s, args.prompts_per_set, 0.02)]
  encoded = encode_prompts(model, texts, chat_template=True)
  path = resolve("smollm2-135m-instruct")
  hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                            dtype=torch.float32).eval()

  def transformers_generate(ids):
    start = time.perf_counter()
    with torch.no_grad():
      hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                  do_sample=False, max_new_tokens=args.new_tokens,
                  min_new_tokens=args.new_tokens)
    return time.perf_counter() - start

  settings = ["transformers", "autoregressive", *drafters]
  totals = {s: [] for s in settings}
  accepted = {name: [] for name in drafters}
  for run in range(args.runs + 1):  # round 0 is the warm-up
    seconds = dict.fromkeys(settings, 0.0)
    for ids in encoded:
      seconds["transformers"] += transformers_generate(ids)
      t, reference, _ = ours(model, ids, Autoregressive(), None, args.new_tokens)
      seconds["autoregressive"] += t
      for name, (drafter, params) in drafters.items():
        t, out, acc = ours(model, ids, drafter, params, args.new_tokens)
        if out != reference:
          raise SystemExit(f"{name}: speculative output differs from autoregressive decoding")
        seconds[name] += t
        if run == 0:
          accepted[name] += acc
    if run:
      for s in settings:
        totals[s].append(seconds[s])
      print(f"round {run}: " + ", ".join(f"{s} {seconds[s]:.1f} s" for s in settings), flush=True)

  median = {s: statistics.median(v) for s, v in totals.items()}
  tokens = len(encoded) * args.new_tokens
  rows = {name: {"tau": round(float(np.mean(accepted[name])) + 1, 3),
                 "tokens_per_s": round(tokens / median[name], 1),
                 "speedup_vs_autoregressive": round(median["autoregressive"] / median[name], 3),
                 "speedup_vs_transformers": round(median["transformers"] / median[name], 3)}
          for name in drafters}
  for name, row in rows.items():
    print(f"{name}: tau {row['tau']:.2f}, {row['speedup_vs_autoregressive']:.2f}x over our "
          f"autoregressive, {row['speedup_vs_transformers']:.2f}x over transformers generate")
  print(json.dumps({"prompts": len(encoded), "new_tokens": args.new_tokens, "runs": args.runs,
                    "autoregressive_tokens_per_s": round(tokens / median["autoregressive"], 1),
                    "transformers_tokens_per_s": round(tokens / median["transformers"], 1),
                    "drafters": rows}))


if __name__ == "__main__":
  main()
