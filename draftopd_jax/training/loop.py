"""The training loop the SFT and Draft-OPD jobs share.

`Run.start` places the train state and the frozen target on the mesh and resumes from the latest
checkpoint (under the settings the run started with, kept in WORKDIR/run_config.json);
`Run.train` updates until the step limit or the FLOPs budget, with held-out tau when due,
metrics, checkpoints, a NaN check and SIGTERM handling. A job supplies what differs as
`Hooks`: its batches, its FLOP count per update, what it logs and how it evaluates.
"""

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from draftopd_jax.errors import UserError
from draftopd_jax.parallel import sharding
from draftopd_jax.training import trainer
from draftopd_jax.training.checkpoints import Checkpointer
from draftopd_jax.training.metric_writer import MetricWriter
from draftopd_jax.training.preemption import Preempted, PreemptionWatch


def make_optimizer(train_config) -> optax.GradientTransformation:
  t = train_config
  return trainer.make_optimizer(t.learning_rate, t.warmup_steps, t.steps, t.weight_decay,
                                t.grad_clip, t.final_lr_fraction)


def stream_indices(seed: int, size: int, position: int, count: int, rows: slice) -> list[int]:
  """Dataset indices at stream positions `position`..`position + count - 1`: a fixed permutation
  of the `size` items per epoch, so a resumed run continues the same stream; of those, the `rows`
  this process's devices hold."""
  order = lambda epoch: np.random.default_rng([seed, epoch]).permutation(size)
  return [order(p // size)[p % size] for p in range(position, position + count)][rows]


# The settings that decide what a run trains and how (top-level config keys; those of an OPD
# run's SFT warm-up, under "warmup.", count as that job's own). A run resuming from a checkpoint
# must keep them, so that one workdir never holds a run trained two ways; it may run longer, move
# its feature cache, and change its mesh, held-out sets, validation and logging.
TRAINING_SETTINGS = ("mode", "model", "dtype", "init_from", "drafter", "data", "train", "loss",
                     "rollout", "stream_size")
MAY_CHANGE_ON_RESUME = ("train.steps", "train.flops_budget", "data.feature_cache_dir")


def _decides_training(key: str) -> bool:
  key = key.removeprefix("warmup.")
  return key.split(".")[0] in TRAINING_SETTINGS and key not in MAY_CHANGE_ON_RESUME


def _flat(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def record_config(config, out: pathlib.Path, resuming: bool, stream_size: int | None = None
                  ) -> None:
  """Keeps the run's config, and the number of items its data stream permutes, in
  WORKDIR/run_config.json; a run resuming from a checkpoint must have the same TRAINING_SETTINGS
  (but for MAY_CHANGE_ON_RESUME) and stream size (a grown corpus would reorder the stream). Keys
  its file lacks (settings newer than the run) are not compared."""
  file = out / "run_config.json"
  current = json.loads(json.dumps(config.to_dict(), default=str))  # tuples as lists, as read
  if stream_size is not None:
    current["stream_size"] = stream_size
  if resuming and file.is_file():
    saved, now = _flat(json.loads(file.read_text())), _flat(current)
    changed = sorted(k for k in saved if saved[k] != now.get(k) and _decides_training(k))
    if changed:
      shown = "; ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
      raise UserError(f"{out} holds a run with other settings ({shown}"
                      f"{'; ...' if len(changed) > 3 else ''}): resume it with the same settings "
                      "or pass a new --workdir")
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".json.partial")
    partial.write_text(json.dumps(current, indent=1))
    os.replace(partial, file)  # other processes may be reading it


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What a job plugs into `Run.train`; `metrics` are an update's metrics, on the host."""

  # stream position -> this process's batch rows; read one update ahead, in a thread
  batch: Callable[[int], tuple[np.ndarray, ...]]
  flops: Callable[[dict], dict[str, float]]  # metrics -> the update's FLOPs by part
  record: Callable[[dict], dict]  # metrics -> what metrics.jsonl logs for the update
  postfix: Callable[[dict], dict[str, str]]  # metrics -> the progress bar's postfix
  # (step, train FLOPs) -> measures and writes held-out tau; what it returns is not used here
  evaluate: Callable[[int, float], object]


@dataclasses.dataclass
class Run:
  config: object
  out: pathlib.Path
  mesh: Mesh
  state: trainer.TrainState
  train_step: trainer.StepFn
  target_params: dict
  checkpointer: Checkpointer
  writer: MetricWriter
  position: int  # in the job's data stream: examples or prompts consumed so far

  @classmethod
  def start(cls, config, out: pathlib.Path, mesh: Mesh, step_fn: trainer.StepFn,
            optimizer: optax.GradientTransformation, params: dict, target_params: dict,
            batch_inputs: int = 2, stream_size: int | None = None) -> "Run":
    """The state of `params` (or the latest checkpoint's) and the target, placed on `mesh`;
    `stream_size`: the number of items the data stream permutes (`stream_indices`)."""
    train_step, state, target_params = trainer.shard_step(
        step_fn, mesh, trainer.init_state(params, optimizer, config.train.seed), target_params,
        config.sharding_rules, batch_inputs=batch_inputs)
    checkpointer = Checkpointer(out / "checkpoints", keep=config.keep_checkpoints)
    record_config(config, out, resuming=checkpointer.latest_step() is not None,
                  stream_size=stream_size)
    position = 0
    if checkpointer.latest_step() is not None:
      state, position = checkpointer.restore(state)
      print(f"resumed from step {int(state.step)} (data position {position})")
    writer = MetricWriter(out, tensorboard=config.tensorboard, enabled=jax.process_index() == 0)
    return cls(config, out, mesh, state, train_step, target_params, checkpointer, writer, position)

  @property
  def step(self) -> int:
    return int(self.state.step)

  def train(self, hooks: Hooks, *, name: str, rows: int, steps: int, flops_budget: float,
            used_flops: float) -> float:
    """Updates of `rows` global batch rows until `steps`, or until the first update that reaches
    `flops_budget` (> 0; a FLOPs budget matches compute across runs whose updates cost
    differently). Returns the training FLOPs used, counting `used_flops` before this start."""
    c = self.config
    finished = lambda: self.step >= steps or 0 < flops_budget <= used_flops
    # Progress in updates, or in TFLOPs under a budget (then the number of updates is unknown).
    done = (lambda: used_flops / 1e12) if flops_budget else (lambda: self.step)
    with (PreemptionWatch() as preemption,
          tqdm(total=flops_budget / 1e12 if flops_budget else steps, initial=done(), desc=name,
               unit="TFLOP" if flops_budget else "step",
               bar_format=("{l_bar}{bar}| {n:.1f}/{total:.1f} TFLOP [{elapsed}<{remaining}"
                           "{postfix}]" if flops_budget else None)) as bar,
          # The next batch is read while this update runs: cached features come from disk, and
          # a synchronous read cost up to a second per 3.2 s update.
          ThreadPoolExecutor(max_workers=1) as reader):
      upcoming = reader.submit(hooks.batch, self.position)
      while not finished():
        step = self.step
        host_rows = upcoming.result()
        upcoming = reader.submit(hooks.batch, self.position + rows)
        batch = [sharding.host_batch(self.mesh, c.sharding_rules, x, rows) for x in host_rows]
        started = time.perf_counter()
        self.state, metrics = self.train_step(self.state, self.target_params, *batch)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - started
        self.position += rows
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
          raise UserError(f"loss became {loss} at step {step}; the last good checkpoint is kept "
                          "(lower train.learning_rate)")
        step_flops = hooks.flops(metrics)
        flops_before, used_flops = used_flops, used_flops + sum(step_flops.values())
        if (step + 1) % c.log_every == 0:
          self.writer.write(step + 1, {**hooks.record(metrics), "seconds_per_step": seconds,
                                       "train_flops": used_flops,
                                       **{f"flops_{k}": v for k, v in step_flops.items()}})
        bar.set_postfix(hooks.postfix(metrics))
        bar.update(min(done(), bar.total) - bar.n)  # the last update may overshoot the budget
        if not finished() and (trainer.crossed(flops_before, used_flops, c.eval_every_flops)
                               if c.eval_every_flops else self.step % c.eval_every == 0):
          hooks.evaluate(self.step, used_flops)
        if self.step % c.checkpoint_every == 0 or finished():
          self.checkpointer.save(self.state, self.position)
        if preemption.requested:
          self.checkpointer.save(self.state, self.position)
          raise Preempted(f"stopped by SIGTERM after step {self.step}; checkpoint saved in "
                          f"{self.out / 'checkpoints'}: run the same command again to resume")
    return used_flops

  def close(self) -> None:
    self.writer.close()
    self.checkpointer.close()
