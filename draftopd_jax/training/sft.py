"""`main.py` mode `sft`: train a DFlash drafter on target-regenerated responses.

Prompts come from the ShareGPT train split (or a JSONL file); the target regenerates responses
once (cached in the workdir); the loop trains with the jitted step, measures held-out tau every
`eval_every` steps, logs to stdout and `metrics.jsonl`, checkpoints with orbax and resumes from
the latest checkpoint. The final and the best (held-out tau) drafters are saved as drafter
checkpoints that `configs/eval.py` loads.
"""

import json
import pathlib
import time

import jax
import numpy as np
from tqdm import tqdm

from draftopd_jax.data.prompts import eval_prompts, read_prompts_file, sharegpt_prompts
from draftopd_jax.decoding import engine
from draftopd_jax.decoding.completions import encode_prompts, pad_batch
from draftopd_jax.decoding.drafters import DFlashDrafter
from draftopd_jax.decoding.sampling import SamplingConfig
from draftopd_jax.errors import UserError
from draftopd_jax.io import LoadedModel, load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter, save_drafter
from draftopd_jax.models import dflash
from draftopd_jax.training import data, flops, trainer
from draftopd_jax.training.checkpoints import Checkpointer


def training_prompts(config, model: LoadedModel) -> list[list[int]]:
  d = config.data
  texts = (read_prompts_file(d.prompts_file) if d.prompts_file
           else sharegpt_prompts("train", d.num_prompts, d.heldout_fraction))
  encoded = encode_prompts(model, texts, chat_template=True)
  kept = [ids for ids in encoded if len(ids) <= d.max_prompt_tokens]
  if not kept:
    raise UserError(f"no training prompt fits in data.max_prompt_tokens={d.max_prompt_tokens}")
  return kept


def regenerated_examples(config, model: LoadedModel, workdir: pathlib.Path) -> list[data.Example]:
  d = config.data
  prompts = training_prompts(config, model)
  sampling = SamplingConfig(temperature=d.temperature)
  settings = {"prompts": data.cache_key("", {"ids": prompts}), "response_tokens": d.response_tokens,
              "temperature": d.temperature, "dtype": config.dtype}
  path = workdir / "data" / f"responses-{data.cache_key(model.source, settings)}.jsonl"

  def generate_batch(batch: list[list[int]]) -> list[list[int]]:
    state = engine.run(model.cfg, model.params, *pad_batch(batch, model.tokenizer.pad_id),
                       max_new_tokens=d.response_tokens, sampling=sampling,
                       eos_ids=model.tokenizer.eos_ids, seed=len(batch[0]))
    return engine.new_tokens(state)

  return data.regenerate(prompts, path, generate_batch, d.regen_batch_size)


def make_drafter(config, model: LoadedModel):
  c = config.drafter
  if c.init_from:
    drafter, params = load_drafter(c.init_from, model.cfg)
    if not isinstance(drafter, DFlashDrafter):
      raise UserError(f"{c.init_from} is not a DFlash drafter; SFT trains DFlash drafters")
    return drafter, params
  cfg = dflash.DFlashConfig.for_target(model.cfg, num_layers=c.num_layers,
                                       block_size=c.block_size, mask_token_id=c.mask_token_id)
  return DFlashDrafter(cfg), dflash.init_params(cfg, config.train.seed)


def run_sft(config, workdir: str | None) -> dict:
  if not workdir:
    raise UserError("sft writes checkpoints and metrics: pass --workdir=DIR")
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  t = config.train
  model = load_model(config.model, dtype=config.dtype)
  drafter, params = make_drafter(config, model)
  examples = regenerated_examples(config, model, out)
  heldout = [p for name in config.heldout.datasets
             for p in eval_prompts(name, config.heldout.num_prompts, config.data.heldout_fraction)]
  heldout_batch = pad_batch(encode_prompts(model, heldout, chat_template=True),
                            model.tokenizer.pad_id)

  optimizer = trainer.make_optimizer(t.learning_rate, t.warmup_steps, t.steps, t.weight_decay,
                                     t.grad_clip)
  state = trainer.init_state(params, optimizer, t.seed)
  checkpointer = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
  position = 0
  if checkpointer.latest_step() is not None:
    state, position = checkpointer.restore(state)
    print(f"resumed from step {int(state.step)} (data position {position})")
  step_flops = flops.dflash_train(drafter.cfg, model.cfg, t.batch_size, config.data.seq_len,
                                  t.num_anchors)
  # The data stream: a fixed permutation per epoch, addressed by the position in the stream.
  order = lambda epoch: np.random.default_rng([t.seed, epoch]).permutation(len(examples))

  def tau_now() -> float:
    return trainer.heldout_tau(model.cfg, model.params, drafter, state.params, *heldout_batch,
                               config.heldout.max_new_tokens, model.tokenizer.eos_ids)

  log = open(out / "metrics.jsonl", "a")
  best = json.loads((out / "best.json").read_text())["heldout_tau"] if (out / "best.json").is_file() else -1.0
  step_kwargs = dict(cfg=drafter.cfg, target_cfg=model.cfg, optimizer=optimizer,
                     num_anchors=t.num_anchors, gamma=t.gamma, distill=t.loss == "kl")
  if t.loss not in ("ce", "kl"):
    raise UserError(f"train.loss={t.loss!r}; choose ce or kl")
  start_step = int(state.step)
  with tqdm(total=t.steps, initial=start_step, desc="sft", unit="step") as bar:
    while int(state.step) < t.steps:
      step = int(state.step)
      if step % config.eval_every == 0:
        tau = tau_now()
        record = {"step": step, "heldout_tau": tau,
                  "train_flops": step * sum(step_flops.values())}
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.write(f"step {step}: held-out tau {tau:.3f}")
        if tau > best:
          best = tau
          save_drafter(out / "best_drafter", drafter, state.params, model.cfg)
          (out / "best.json").write_text(json.dumps({"step": step, "heldout_tau": tau}))
      indices = [order(p // len(examples))[p % len(examples)]
                 for p in range(position, position + t.batch_size)]
      tokens, mask = data.to_batch([examples[i] for i in indices], config.data.seq_len,
                                   model.tokenizer.pad_id)
      started = time.perf_counter()
      state, metrics = trainer.dflash_train_step(state, model.params, tokens, mask, **step_kwargs)
      loss = float(metrics["loss"])
      position += t.batch_size
      if not np.isfinite(loss):
        raise UserError(f"loss became {loss} at step {step}; the last good checkpoint is kept "
                        "(lower train.learning_rate)")
      if (step + 1) % config.log_every == 0:
        log.write(json.dumps({"step": step + 1, "loss": loss,
                              "grad_norm": float(metrics["grad_norm"]),
                              "accuracy_by_slot": np.asarray(metrics["accuracy_by_slot"]).round(4).tolist(),
                              "seconds_per_step": time.perf_counter() - started,
                              "train_flops": (step + 1) * sum(step_flops.values()),
                              **{f"flops_{k}": v for k, v in step_flops.items()}}) + "\n")
        log.flush()
      bar.set_postfix(loss=f"{loss:.3f}")
      bar.update(1)
      if int(state.step) % config.checkpoint_every == 0 or int(state.step) == t.steps:
        checkpointer.save(state, position)
  tau = tau_now()
  log.write(json.dumps({"step": int(state.step), "heldout_tau": tau,
                        "train_flops": int(state.step) * sum(step_flops.values())}) + "\n")
  log.close()
  save_drafter(out / "drafter", drafter, jax.device_get(state.params), model.cfg)
  checkpointer.close()
  print(f"done: step {int(state.step)}, held-out tau {tau:.3f} (best {max(best, tau):.3f}); "
        f"drafter saved to {out / 'drafter'}")
  return {"heldout_tau": tau, "steps": int(state.step)}
