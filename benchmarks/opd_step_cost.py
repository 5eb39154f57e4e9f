"""Cost of a Draft-OPD update on SmolLM2-135M-Instruct (CPU, fp32), by phase, and against an SFT
step on the same number of target tokens.

Phases, each jitted on its own and timed interleaved (medians over --runs):
  rollout  prefill + the speculative `while_loop` with the current DFlash drafter (greedy),
           recording the target's features and log-probs (the teacher: no second target pass)
  replay   drafter forward over every planned block + the two-stream loss + backward
  update   AdamW on the gradients
and the fused step (all three in one jit, as training runs it). For reference also the rollout
without recording (`rollout_bare`, what inference runs) and the second target pass over the
finished sequences that recording replaces (`target_pass`, still used by random anchors). The
SFT step gets the same batch of B sequences of the same length S (= prompt width + new tokens +
K): its target forward covers the same B x S tokens the rollout commits.

  python benchmarks/opd_step_cost.py [--drafter SFT_DRAFTER_DIR] [--runs 5] [--batch 4]
The last line printed is JSON.
"""

import argparse
import functools
import json
import statistics
import time

import jax
import numpy as np

from draftopd_jax.data import prompts
from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.io import load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter
from draftopd_jax.models import dflash
from draftopd_jax.models.drafters import DFlashDrafter
from draftopd_jax.opd import anchor_plan, replay, update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.sft import dflash_loss
from draftopd_jax.training import trainer


def timed(fn, *args) -> float:
  started = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - started


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--drafter", default="", help="an SFT DFlash drafter (default: untrained)")
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--prompt_width", type=int, default=96)
  args = parser.parse_args()
  model = load_model("smollm2-135m-instruct")
  if args.drafter:
    drafter, params = load_drafter(args.drafter, model.cfg)
  else:
    cfg = dflash.DFlashConfig.for_target(model.cfg, num_layers=2, block_size=8, mask_token_id=0)
    drafter, params = DFlashDrafter(cfg), dflash.init_params(cfg)
  cfg, k = drafter.cfg, drafter.cfg.block_size
  texts = prompts.sharegpt_prompts("train", 64)
  rows = [ids for ids in encode_prompts(model, texts, True) if len(ids) <= args.prompt_width]
  batch = pad_batch(rows[:args.batch], model.tokenizer.pad_id, width=args.prompt_width)
  rollout = update_step.RolloutOptions(max_new_tokens=args.new_tokens,
                                    eos_ids=model.tokenizer.eos_ids)
  loss = LossOptions()
  optimizer = trainer.make_optimizer(3e-4, 5, 100)
  target = model.params

  rollout_fn = jax.jit(lambda p, prompt, mask, record: update_step.run_rollout(
      drafter, p, model.cfg, target, prompt, mask, jax.random.key(0), rollout,
      record_teacher=record), static_argnums=3)
  decoded = rollout_fn(params, *batch, True)
  teacher = replay.from_rollout(decoded)
  plan = anchor_plan.from_trace(decoded.trace, k)
  target_pass_fn = jax.jit(lambda tokens, anchors: replay.target_pass(
      cfg.target_layer_ids, model.cfg, target, tokens, anchors, k, full_rows=False))
  replay_fn = jax.jit(jax.value_and_grad(lambda p, tokens, plan, teacher: replay.loss_fn(
      p, drafter, None, model.cfg, target, tokens, plan, teacher, loss)[0]))
  _, grads = replay_fn(params, decoded.tokens_BxS, plan, teacher)
  opt_state = optimizer.init(params)
  update_fn = jax.jit(lambda g, s, p: optimizer.update(g, s, p))
  fused = jax.jit(update_step.opd_step_fn(drafter=drafter, target_cfg=model.cfg,
                                       optimizer=optimizer, rollout=rollout, loss=loss))
  seq_len = decoded.tokens_BxS.shape[1]
  sft = jax.jit(dflash_loss.step_fn(cfg=cfg, target_cfg=model.cfg, optimizer=optimizer,
                                       num_anchors=16, gamma=0.0, distill=False))
  sft_tokens = np.asarray(decoded.tokens_BxS)
  sft_mask = np.broadcast_to(np.arange(seq_len) >= args.prompt_width, sft_tokens.shape)
  state = lambda: trainer.init_state(jax.tree.map(np.array, params), optimizer, 0)
  phases = {
      "rollout": functools.partial(timed, rollout_fn, params, *batch, True),
      "replay": functools.partial(timed, replay_fn, params, decoded.tokens_BxS, plan, teacher),
      "update": functools.partial(timed, update_fn, grads, opt_state, params),
      "opd_step": lambda: timed(fused, state(), target, *batch),
      "sft_step": lambda: timed(sft, state(), target, sft_tokens, sft_mask),
      "rollout_bare": functools.partial(timed, rollout_fn, params, *batch, False),
      "target_pass": functools.partial(timed, target_pass_fn, decoded.tokens_BxS,
                                       plan.anchor_pos_BxN),
  }
  for fn in phases.values():  # compile
    fn()
  times = {name: [] for name in phases}
  for _ in range(args.runs):
    for name, fn in phases.items():
      times[name].append(fn())
  medians = {name: statistics.median(t) for name, t in times.items()}
  phase_names = ("rollout", "replay", "update")
  split = sum(medians[p] for p in phase_names)
  result = {
      "batch": args.batch, "seq_len": seq_len, "target_tokens_per_step": args.batch * seq_len,
      "rollout_tau": float(update_step.rollout_metrics(decoded.trace, plan)["rollout_tau"]),
      "seconds": {name: round(v, 3) for name, v in medians.items()},
      "share": {p: round(medians[p] / split, 3) for p in phase_names},
      "opd_to_sft_step_ratio": round(medians["opd_step"] / medians["sft_step"], 2),
  }
  for name, value in medians.items():
    print(f"{name:>9}: {value:.3f} s")
  print(f"OPD step / SFT step on {args.batch} x {seq_len} target tokens: "
        f"{result['opd_to_sft_step_ratio']:.2f}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
