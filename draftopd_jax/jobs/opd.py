"""`main.py` mode `opd`: Draft-OPD of a DFlash (or EAGLE-3) drafter, from an SFT drafter (or a
short SFT warm-up when none is given).

Each update rolls out greedy speculative decoding with the current drafter on a batch of training
prompts, replays the rollout's blocks with gradients and trains on the committed tokens (forward
KL) and the rejected proposals (position-decayed reverse KL). Held-out tau is measured before,
every `eval_every` updates and after; metrics go to stdout, metrics.jsonl and TensorBoard;
checkpoints (train state + prompt position) let a stopped run resume; plots land in the workdir.
"""

import json
import pathlib
import time

import jax
import numpy as np
from tqdm import tqdm

from draftopd_jax.data import prompts
from draftopd_jax.data.batching import encode_prompts
from draftopd_jax.errors import UserError
from draftopd_jax.evaluation.heldout import HeldoutTau
from draftopd_jax.io import LoadedModel, load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter, read_meta, save_drafter
from draftopd_jax.jobs import config_check
from draftopd_jax.jobs.sft import run_sft
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.opd import update_step
from draftopd_jax.opd.losses import LossOptions
from draftopd_jax.parallel import sharding
from draftopd_jax.sampling import SamplingConfig
from draftopd_jax.training import flops, plots, trainer
from draftopd_jax.training.checkpoints import Checkpointer
from draftopd_jax.training.metric_writer import MetricWriter
from draftopd_jax.training.preemption import Preempted, PreemptionWatch


def starting_drafter(config, out: pathlib.Path, model: LoadedModel):
  """The drafter to post-train: `init_from`, else the result of the SFT warm-up job (run, or
  resumed, in WORKDIR/sft_warmup)."""
  path = config.init_from
  if not path:
    warmup_dir = out / "sft_warmup"
    if not (warmup_dir / "drafter" / "drafter.json").is_file():
      print(f"no SFT drafter given (init_from): SFT warm-up in {warmup_dir}")
      run_sft(config.warmup, str(warmup_dir))
    path = warmup_dir / "drafter"
  drafter, params = load_drafter(path, model.cfg, model.tokenizer)
  if not isinstance(drafter, (DFlashDrafter, Eagle3Drafter)):
    raise UserError(f"{path} holds a {type(drafter).__name__}; Draft-OPD trains DFlash and "
                    "EAGLE-3 drafters")
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


def fixed_width_batch(rows: list[list[int]], width: int, pad_id: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded to one width for every batch, so the step compiles once."""
  tokens = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    tokens[i, :len(row)], mask[i, :len(row)] = row, True
  return tokens, mask


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


def check_step_memory(config, vocab_size: int) -> None:
  """The update's largest activations: the replay's float32 logits, log-probs and gradients over
  one block per rollout token, the recorded verify rows (full estimator), the second target pass
  (random anchors)."""
  r = config.rollout
  if config.init_from:
    k = read_meta(config.init_from)[1]["config"]["block_size"]
  else:
    k = config.warmup.drafter.block_size
  blocks = r.batch_size * r.max_new_tokens * (2 if r.anchors == "random" else 1)
  floats = 3 * blocks * k * vocab_size
  if config.loss.estimator == "full":
    floats += r.batch_size * r.max_new_tokens * (k - 1) * vocab_size
  if r.anchors == "random":
    floats += 2 * r.batch_size * (config.data.max_prompt_tokens + r.max_new_tokens) * vocab_size
  config_check.check_memory(4.0 * floats, "a Draft-OPD update",
                            "lower rollout.batch_size (rollouts_per_update keeps the batch) or "
                            "rollout.max_new_tokens")


def run_opd(config, workdir: str | None) -> dict:
  out = pathlib.Path(workdir or config.workdir)
  r, t = config.rollout, config.train
  batch = r.batch_size * r.rollouts_per_update
  mesh = trainer.training_mesh(config.mesh, config.sharding_rules, r.batch_size)
  model = load_model(config.model, dtype=config.dtype)
  rollout_options, loss_options = options(config, model.tokenizer.eos_ids)
  check_step_memory(config, model.cfg.vocab_size)
  out.mkdir(parents=True, exist_ok=True)
  drafter, start_params = starting_drafter(config, out, model)
  pool = prompt_pool(config, model)
  heldout_tau = HeldoutTau(model, tuple(config.heldout.datasets), config.heldout.num_prompts,
                           config.heldout.max_new_tokens, config.data.heldout_fraction)

  optimizer = trainer.make_optimizer(t.learning_rate, t.warmup_steps, t.steps, t.weight_decay,
                                     t.grad_clip, t.final_lr_fraction)
  eagle = isinstance(drafter, Eagle3Drafter)
  d2t = start_params["d2t"] if eagle else None
  step_fn = update_step.opd_step_fn(drafter=drafter, target_cfg=model.cfg, optimizer=optimizer,
                                 rollout=rollout_options, loss=loss_options, d2t_Vd=d2t)
  train_step, state, target_params = trainer.shard_step(
      step_fn, mesh, trainer.init_state(start_params["model"] if eagle else start_params,
                                        optimizer, t.seed), model.params, config.sharding_rules)
  checkpointer = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
  position = 0
  if checkpointer.latest_step() is not None:
    state, position = checkpointer.restore(state)
    print(f"resumed from step {int(state.step)} (prompt position {position})")
  writer = MetricWriter(out, tensorboard=config.tensorboard, enabled=jax.process_index() == 0)
  width = config.data.max_prompt_tokens
  seq_len = width + r.max_new_tokens + drafter.block_size
  blocks = r.max_new_tokens * (2 if r.anchors == "random" else 1)
  order = lambda epoch: np.random.default_rng([t.seed, epoch]).permutation(len(pool))
  rows = sharding.process_rows(mesh, config.sharding_rules, batch)  # this process's prompts
  used_flops = 0.0

  def finished() -> bool:
    # A FLOPs budget (matched-compute comparisons) ends the run at the first update that reaches
    # it; the FLOPs of an update depend on how many verify passes its rollout took.
    return int(state.step) >= t.steps or 0 < t.flops_budget <= used_flops

  def evaluate(step: int) -> dict:
    taus = heldout_tau(drafter, update_step.full_params(drafter, state.params, d2t), target_params)
    writer.write(step, {**taus, "train_flops": used_flops})
    return taus

  if int(state.step) == 0:
    before = evaluate(0)
    if jax.process_index() == 0:
      (out / "before.json").write_text(json.dumps(before))
  else:
    before = json.loads((out / "before.json").read_text())
    used_flops = max((rec.get("train_flops", 0.0) for rec in map(
        json.loads, (out / "metrics.jsonl").open())), default=0.0)
  print("held-out tau before: " + _format(before))
  # Progress in updates, or in TFLOPs under a FLOPs budget (the number of updates is not known).
  done = (lambda: used_flops / 1e12) if t.flops_budget else (lambda: int(state.step))
  with (PreemptionWatch() as preemption,
        tqdm(total=t.flops_budget / 1e12 if t.flops_budget else t.steps, initial=done(),
             desc="opd", unit="TFLOP" if t.flops_budget else "step",
             bar_format=("{l_bar}{bar}| {n:.1f}/{total:.1f} TFLOP [{elapsed}<{remaining}{postfix}]"
                         if t.flops_budget else None)) as bar):
    while not finished():
      step = int(state.step)
      batch_prompts = [pool[order(p // len(pool))[p % len(pool)]]
                       for p in range(position, position + batch)][rows]
      started = time.perf_counter()
      state, metrics = train_step(state, target_params, *(
          sharding.host_batch(mesh, config.sharding_rules, x, batch)
          for x in fixed_width_batch(batch_prompts, width, model.tokenizer.pad_id)))
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - started
      position += batch
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise UserError(f"loss became {loss} at step {step}; the last good checkpoint is kept "
                        "(lower train.learning_rate)")
      flops_before = used_flops
      step_flops = flops.opd(drafter.cfg, model.cfg, batch, width, seq_len,
                             int(metrics["rollout_steps"]) * r.rollouts_per_update, blocks,
                             target_pass=r.anchors == "random")
      used_flops += sum(step_flops.values())
      if (step + 1) % config.log_every == 0:
        writer.write(step + 1, {
            **{k: np.asarray(v).round(5).tolist() for k, v in metrics.items()},
            "seconds_per_step": seconds, "train_flops": used_flops,
            **{f"flops_{k}": v for k, v in step_flops.items()}})
      bar.set_postfix(loss=f"{loss:.3f}", rollout_tau=f"{float(metrics['rollout_tau']):.2f}")
      bar.update(min(done(), bar.total) - bar.n)  # the last update may overshoot the budget
      if not finished() and (trainer.crossed(flops_before, used_flops, config.eval_every_flops)
                             if config.eval_every_flops else
                             int(state.step) % config.eval_every == 0):
        bar.write(f"step {int(state.step)}: held-out tau " + _format(evaluate(int(state.step))))
      if int(state.step) % config.checkpoint_every == 0 or finished():
        checkpointer.save(state, position)
      if preemption.requested:
        checkpointer.save(state, position)
        raise Preempted(f"stopped by SIGTERM after step {int(state.step)}; checkpoint saved in "
                        f"{out / 'checkpoints'}: run the same command again to resume")
  after = evaluate(int(state.step))
  writer.close()
  checkpointer.close()
  save_drafter(out / "drafter", drafter,
               jax.device_get(update_step.full_params(drafter, state.params, d2t)), model.cfg,
               model.tokenizer)
  if jax.process_index() == 0:
    plots.opd_curves(out / "metrics.jsonl", out)
  print("held-out tau before: " + _format(before))
  print("held-out tau after:  " + _format(after))
  print(f"drafter saved to {out / 'drafter'}; plots and metrics in {out}")
  return {"before": before, "after": after, "steps": int(state.step)}


def _format(taus: dict) -> str:
  return ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in taus.items())
