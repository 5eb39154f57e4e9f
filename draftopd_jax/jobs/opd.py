"""`main.py` mode `opd`: Draft-OPD of a DFlash (or EAGLE-3) drafter, from an SFT drafter (`main.py`
runs the SFT warm-up job first when none is given).

Each update rolls out greedy speculative decoding with the current drafter on a batch of training
prompts, replays the rollout's blocks with gradients and trains on the committed tokens (forward
KL) and the rejected proposals (position-decayed reverse KL). Held-out tau is measured before,
every `eval_every` updates and after; metrics go to stdout, metrics.jsonl and TensorBoard;
checkpoints (train state + prompt position) let a stopped run resume; plots land in the workdir.
"""

import json
import pathlib

import jax
import numpy as np
from tqdm import tqdm

from draftopd_jax.data import prompts
from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import engine
from draftopd_jax.errors import UserError
from draftopd_jax.evaluation.heldout import HeldoutTau, format_taus
from draftopd_jax.io import LoadedModel, load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter, save_drafter
from draftopd_jax.jobs import config_check
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.opd import update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.parallel import sharding
from draftopd_jax.sampling import SamplingConfig
from draftopd_jax.training import flops, loop, plots, trainer


def starting_drafter(config, model: LoadedModel):
  """The drafter to post-train (`init_from`: a zoo name, a drafter checkpoint, or the SFT
  warm-up's result that `main.py` fills in)."""
  if not config.init_from:
    raise UserError("Draft-OPD starts from an SFT drafter: set config.init_from (a drafter "
                    "checkpoint or zoo name), or leave it empty on the command line for the "
                    "SFT warm-up in config.warmup")
  drafter, params = load_drafter(config.init_from, model.cfg, model.tokenizer)
  if not isinstance(drafter, (DFlashDrafter, Eagle3Drafter)):
    raise UserError(f"{config.init_from} holds a {type(drafter).__name__}; Draft-OPD trains "
                    "DFlash and EAGLE-3 drafters")
  return drafter, params


def prompt_pool(config, model) -> list[list[int]]:
  d = config.data
  texts = prompts.training_prompts(d.source, "train", d.skip + d.num_prompts, d.heldout_fraction,
                                   d.tfds_field, d.tfds_data_dir)[d.skip:]
  pool = [ids for ids in encode_prompts(model, texts, chat_template=True)
          if len(ids) <= d.max_prompt_tokens]
  if not pool:
    raise UserError(f"no OPD prompt fits in data.max_prompt_tokens={d.max_prompt_tokens} "
                    f"(source {d.source!r}, skip {d.skip})")
  return pool


def options(config, eos_ids) -> tuple[update_step.RolloutOptions, LossOptions]:
  r = config.rollout
  try:
    return (update_step.RolloutOptions(
        max_new_tokens=r.max_new_tokens, eos_ids=tuple(eos_ids),
        sampling=SamplingConfig(temperature=r.temperature), anchors=r.anchors,
        rejected_stream=r.rejected_stream, include_correction=r.include_correction,
        rollouts_per_update=r.rollouts_per_update),
            LossOptions(**config.loss))
  except (TypeError, ValueError) as e:
    raise UserError(str(e)) from None


def check_step_memory(config, vocab_size: int, k: int) -> None:
  """The update's largest activations for block size `k`: the replay's float32 logits, log-probs
  and gradients over one block per rollout token, the recorded verify rows (full estimator), the
  second target pass (random anchors)."""
  r = config.rollout
  blocks = r.batch_size * r.max_new_tokens * (2 if r.anchors == "random" else 1)
  floats = 3 * blocks * k * vocab_size
  if config.loss.estimator == "full":
    floats += r.batch_size * r.max_new_tokens * (k - 1) * vocab_size
  if r.anchors == "random":
    floats += 2 * r.batch_size * (config.data.max_prompt_tokens + r.max_new_tokens) * vocab_size
  config_check.check_memory(4.0 * floats, "a Draft-OPD update",
                            "lower rollout.batch_size (rollouts_per_update keeps the batch) or "
                            "rollout.max_new_tokens")


def update_flops(config, drafter, target_cfg, rollout_steps: int) -> dict[str, float]:
  """FLOPs of one update, by part; they depend on the verify passes its rollout took."""
  r = config.rollout
  batch, width = r.batch_size * r.rollouts_per_update, config.data.max_prompt_tokens
  return flops.opd(drafter.cfg, target_cfg, batch, width,
                   engine.buffer_length(width, r.max_new_tokens, drafter.block_size),
                   rollout_steps * r.rollouts_per_update,
                   r.max_new_tokens * (2 if r.anchors == "random" else 1),
                   target_pass=r.anchors == "random")


def tau_before(run: loop.Run, evaluate) -> tuple[dict, float]:
  """(held-out tau before training, training FLOPs used so far): measured at a fresh start and
  kept in before.json, read back with the FLOPs from metrics.jsonl when resuming."""
  if run.step == 0:
    before = evaluate(0, 0.0)
    if jax.process_index() == 0:
      (run.out / "before.json").write_text(json.dumps(before))
    return before, 0.0
  used_flops = max((rec.get("train_flops", 0.0) for rec in map(
      json.loads, (run.out / "metrics.jsonl").open())), default=0.0)
  return json.loads((run.out / "before.json").read_text()), used_flops


def preflight(config, block_size: int) -> None:
  """The option values and the memory of an update with drafters of `block_size`: checked before
  an SFT warm-up spends anything."""
  model = load_model(config.model, dtype=config.dtype)
  options(config, model.tokenizer.eos_ids)
  check_step_memory(config, model.cfg.vocab_size, block_size)


def run_opd(config, workdir: str | None) -> dict:
  out = pathlib.Path(workdir or config.workdir)
  r, t = config.rollout, config.train
  batch = r.batch_size * r.rollouts_per_update
  mesh = trainer.training_mesh(config.mesh, config.sharding_rules, r.batch_size)
  model = load_model(config.model, dtype=config.dtype)
  rollout_options, loss_options = options(config, model.tokenizer.eos_ids)
  drafter, start_params = starting_drafter(config, model)
  check_step_memory(config, model.cfg.vocab_size, drafter.block_size)
  out.mkdir(parents=True, exist_ok=True)
  pool = prompt_pool(config, model)
  heldout = HeldoutTau(model, tuple(config.heldout.datasets), config.heldout.num_prompts,
                       config.heldout.max_new_tokens, config.data.heldout_fraction)

  optimizer = loop.make_optimizer(t)
  eagle = isinstance(drafter, Eagle3Drafter)
  d2t = start_params["d2t"] if eagle else None
  step_fn = update_step.opd_step_fn(drafter=drafter, target_cfg=model.cfg, optimizer=optimizer,
                                    rollout=rollout_options, loss=loss_options, d2t_Vd=d2t)
  run = loop.Run.start(config, out, mesh, step_fn, optimizer,
                       start_params["model"] if eagle else start_params, model.params,
                       stream_size=len(pool))
  width = config.data.max_prompt_tokens
  rows = sharding.process_rows(mesh, config.sharding_rules, batch)  # this process's prompts

  def prompts_at(position: int) -> tuple[np.ndarray, np.ndarray]:
    return pad_batch([pool[i] for i in loop.stream_indices(t.seed, len(pool), position, batch,
                                                           rows)],
                     model.tokenizer.pad_id, width=width)

  def evaluate(step: int, used_flops: float) -> dict:
    taus = heldout(drafter, update_step.full_params(drafter, run.state.params, d2t),
                   run.target_params)
    run.writer.write(step, {**taus, "train_flops": used_flops})
    return taus

  hooks = loop.Hooks(
      batch=prompts_at, record=lambda m: {k: np.asarray(v).round(5).tolist() for k, v in m.items()},
      flops=lambda m: update_flops(config, drafter, model.cfg, int(m["rollout_steps"])),
      postfix=lambda m: {"loss": f"{float(m['loss']):.3f}",
                         "rollout_tau": f"{float(m['rollout_tau']):.2f}"},
      evaluate=lambda step, used: tqdm.write(f"step {step}: held-out tau "
                                             + format_taus(evaluate(step, used))))
  before, used_flops = tau_before(run, evaluate)
  print("held-out tau before: " + format_taus(before))
  used_flops = run.train(hooks, name="opd", rows=batch, steps=t.steps,
                         flops_budget=t.flops_budget, used_flops=used_flops)
  after = evaluate(run.step, used_flops)
  run.close()
  save_drafter(out / "drafter", drafter,
               jax.device_get(update_step.full_params(drafter, run.state.params, d2t)), model.cfg,
               model.tokenizer)
  if jax.process_index() == 0:
    plots.opd_curves(out / "metrics.jsonl", out)
  print("held-out tau before: " + format_taus(before))
  print("held-out tau after:  " + format_taus(after))
  print(f"drafter saved to {out / 'drafter'}; plots and metrics in {out}")
  return {"before": before, "after": after, "steps": run.step}
