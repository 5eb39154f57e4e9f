"""How much harder the positions a DFlash drafter drafts at are than the ones SFT trains it at.

Greedy speculative decoding (K = 8) of each held-out set's first --prompts prompts, then the
drafter teacher-forced over the committed text with a block at every position: its accuracy per
slot at SFT's uniform anchors (every response position) and at the engine's anchors, and the
engine's own first-slot acceptance, which must equal the teacher-forced one at its anchors
(`evaluation/anchor_gap.py`). SmolLM2-135M-Instruct, fp32, batch 1 per prompt set.

  python benchmarks/anchor_gap.py [--drafter smollm2-135m-instruct-dflash] [--prompts 16] \
      [--new-tokens 128]

The last line printed is JSON.
"""

import argparse
import json

import numpy as np

from draftopd_jax.decoding import engine
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.evaluation import metrics
from draftopd_jax.evaluation.anchor_gap import anchor_gap
from draftopd_jax.evaluation.heldout import HeldoutTau
from draftopd_jax.io import load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter

DATASETS = ("humaneval", "mtbench", "sharegpt")
HELDOUT_FRACTION = 0.02  # configs/eval.py


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--drafter", default="smollm2-135m-instruct-dflash")
  parser.add_argument("--prompts", type=int, default=16)
  parser.add_argument("--new-tokens", type=int, default=128)
  args = parser.parse_args()
  model = load_model("smollm2-135m-instruct")
  drafter, params = load_drafter(args.drafter, model.cfg, model.tokenizer)
  # The held-out sets' prompts, as evaluation during training reads them, each set one batch.
  heldout = HeldoutTau(model, DATASETS, args.prompts, args.new_tokens, HELDOUT_FRACTION)
  results = {}
  for name, rows in heldout.prompts.items():
    state = engine.run(model.cfg, model.params, *pad_batch(rows, model.tokenizer.pad_id),
                       drafter=drafter, drafter_params=params, max_new_tokens=args.new_tokens,
                       eos_ids=model.tokenizer.eos_ids)
    gap = anchor_gap(drafter.cfg, params, model.cfg, model.params, state)
    gap["tau"] = metrics.summarize(metrics.acceptance_lengths(state.trace),
                                   drafter.block_size)["tau"]
    results[name] = gap
    uniform, on_policy = gap["uniform_accuracy_by_slot"], gap["on_policy_accuracy_by_slot"]
    print(f"{name}: tau {gap['tau']:.3f}, anchors at {gap['anchor_share']:.0%} of response "
          f"positions; slot-1 accuracy at uniform anchors {uniform[0]:.3f}, at the engine's "
          f"{on_policy[0]:.3f} (engine acceptance {gap['engine_first_slot_acceptance']:.3f}); "
          f"slot 2: {uniform[1]:.3f} vs {on_policy[1]:.3f}", flush=True)
  mean = lambda key: float(np.mean([r[key][0] for r in results.values()]))
  print(json.dumps({"drafter": args.drafter, "prompts": args.prompts,
                    "new_tokens": args.new_tokens, "datasets": results,
                    "mean_uniform_slot1": mean("uniform_accuracy_by_slot"),
                    "mean_on_policy_slot1": mean("on_policy_accuracy_by_slot")}))


if __name__ == "__main__":
  main()
