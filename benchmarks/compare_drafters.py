"""Is one drafter better than another? Held-out tau of both on the same prompts, paired.

Greedy speculative decoding (SmolLM2-135M-Instruct, fp32) of the first --prompts prompts of each
held-out set (HumanEval, MT-Bench first turns, held-out ShareGPT), each set decoded as one batch,
as evaluation during training does (no timing, so it may share the machine). For each drafter:
macro tau per set; then the difference and ratio of their macro taus over the sets, with 95%
intervals from a paired bootstrap over prompts (`metrics.paired_bootstrap`). A shipped drafter is
replaced only when the difference's interval lies above zero.

  python benchmarks/compare_drafters.py NEW [--old smollm2-135m-instruct-dflash] [--prompts 32] \
      [--new-tokens 128]

NEW and --old: a drafter checkpoint directory or a zoo name. The last line printed is JSON. With
32 prompts a set (15 minutes and 3.3 GB for two 5-layer DFlash drafters, when each set was one
batch) the taus match the eval job's batch-1 ones to within 0.01. Each set is decoded in groups
of 16 prompts of similar length (`HeldoutTau`): 64 prompts a set took 20.5 minutes and 15.5 GB at
peak, where as one batch they needed more than 18 GB on a 24 GB machine.
"""

import argparse
import json

import numpy as np

from draftopd_jax.evaluation import metrics
from draftopd_jax.evaluation.heldout import HeldoutTau
from draftopd_jax.io import load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter

DATASETS = ("humaneval", "mtbench", "sharegpt")
HELDOUT_FRACTION = 0.02  # configs/eval.py


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("new")
  parser.add_argument("--old", default="smollm2-135m-instruct-dflash")
  parser.add_argument("--prompts", type=int, default=32)
  parser.add_argument("--new-tokens", type=int, default=128)
  args = parser.parse_args()
  model = load_model("smollm2-135m-instruct")
  heldout = HeldoutTau(model, DATASETS, args.prompts, args.new_tokens, HELDOUT_FRACTION)
  taus = {}
  for role in ("new", "old"):
    drafter, params = load_drafter(getattr(args, role), model.cfg, model.tokenizer)
    taus[role] = heldout.per_response(drafter, params, model.params)
    print(f"{role} ({getattr(args, role)}): " + ", ".join(
        f"{name} {np.mean(t):.3f}" for name, t in taus[role].items()), flush=True)
  result = metrics.paired_bootstrap(taus["new"], taus["old"])
  lo, hi = result["difference_ci95"]
  print(f"macro tau {result['new_tau']:.3f} vs {result['old_tau']:.3f}: difference "
        f"{result['difference']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}), ratio {result['ratio']:.3f}")
  print(json.dumps({"new": args.new, "old": args.old, "prompts": args.prompts,
                    "new_tokens": args.new_tokens, **result,
                    "tau_per_response": taus}))


if __name__ == "__main__":
  main()
