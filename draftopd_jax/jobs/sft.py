"""`main.py` mode `sft`: train a DFlash or EAGLE-3 drafter on target-regenerated responses.

Prompts come from the ShareGPT train split (or a prompts file, or TFDS); the target regenerates
responses once (cached in the workdir); the loop trains with the jitted step, sharded on the
config's mesh by its logical-axis rules, measures held-out tau every `eval_every` steps, logs to
stdout, `metrics.jsonl` and TensorBoard, checkpoints with orbax and resumes from the latest
checkpoint. The final and the best (held-out tau) drafters are saved as drafter
checkpoints that `configs/eval.py` loads.
"""

import json
import pathlib

import jax
import numpy as np
from tqdm import tqdm

from draftopd_jax.data import prompts, regeneration
from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import engine
from draftopd_jax.errors import UserError
from draftopd_jax.evaluation.heldout import HeldoutTau, format_taus
from draftopd_jax.io import LoadedModel, load_model, zoo
from draftopd_jax.io.drafter_checkpoint import load_drafter, save_drafter
from draftopd_jax.jobs import config_check
from draftopd_jax.jobs.new_drafter import drafter_config, new_drafter
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter
from draftopd_jax.parallel import distributed, sharding
from draftopd_jax.sampling import SamplingConfig
from draftopd_jax.sft import data, dflash_loss, eagle3_loss, feature_cache
from draftopd_jax.sft.validation import Validation
from draftopd_jax.training import flops, loop, trainer


def training_prompts(config, model: LoadedModel) -> list[list[int]]:
  d = config.data
  texts = prompts.training_prompts(d.source, "train", d.skip + d.num_prompts, d.heldout_fraction,
                                   d.tfds_field, d.tfds_data_dir)[d.skip:]
  if not texts:
    raise UserError(f"data.source={d.source!r} gave no training prompts after skipping {d.skip}")
  encoded = encode_prompts(model, texts, chat_template=True)
  kept = [ids for ids in encoded if len(ids) <= d.max_prompt_tokens]
  if not kept:
    raise UserError(f"no training prompt fits in data.max_prompt_tokens={d.max_prompt_tokens}")
  return kept


def regenerated_examples(config, model: LoadedModel, prompts: list[list[int]],
                         workdir: pathlib.Path) -> list[data.Example]:
  d = config.data
  sampling = SamplingConfig(temperature=d.temperature)
  settings = {"prompts": data.cache_key("", {"ids": prompts}), "response_tokens": d.response_tokens,
              "temperature": d.temperature, "dtype": config.dtype}
  path = workdir / "data" / f"responses-{data.cache_key(model.source, settings)}.jsonl"

  def generate_batch(batch: list[list[int]]) -> list[list[int]]:
    state = engine.run(model.cfg, model.params, *pad_batch(batch, model.tokenizer.pad_id),
                       max_new_tokens=d.response_tokens, sampling=sampling,
                       eos_ids=model.tokenizer.eos_ids, seed=len(batch[0]))
    return engine.new_tokens(state)

  return data.regenerate(prompts, path, generate_batch, d.regen_batch_size,
                         writer=jax.process_index() == 0, after_reading=distributed.barrier)


def corpus_examples(root: str, limit: int, model: LoadedModel, limit_key: str,
                    split: str | None = None, skip: int = 0) -> list[data.Example]:
  """`limit` examples (0 = all) of the corpus in `root` after its first `skip`, of `split` if
  given; `limit_key` names the config key of `limit`, for the errors."""
  corpus = regeneration.load_corpus(root, model)
  if split and corpus.settings.split != split:
    raise UserError(f"the corpus in {root} holds the {corpus.settings.split} split; use a "
                    f"{split} corpus (configs/corpus.py:{split})")
  pairs = corpus.examples(skip + limit if limit else None)[skip:]
  after = f" after the first {skip}" if skip else ""
  if not pairs:
    raise UserError(f"the corpus in {root} holds no examples{after} yet; run configs/corpus.py")
  if limit and len(pairs) < limit:
    raise UserError(f"the corpus in {root} holds {len(pairs)} examples{after}, fewer than "
                    f"{limit_key}={limit}; extend it with configs/corpus.py")
  return [data.Example(tuple(p), tuple(r)) for p, r in pairs]


def target_features(config, model: LoadedModel, drafter: DFlashDrafter,
                    examples: list[data.Example]) -> feature_cache.FeatureCache:
  """The feature cache for this drafter's taps of `examples`, indexed alike (runs on a prefix of
  a corpus share its chunks); process 0 builds it."""
  d = config.data
  cache_dir = d.feature_cache_dir or zoo.default_cache_dir() / "features"
  build = lambda: feature_cache.build(
      [(e.prompt_ids, e.response_ids) for e in examples], model.cfg, model.params,
      regeneration.target_fingerprints(model)["weights"],
      dflash_loss.cached_layer_ids(drafter.cfg, model.cfg, config.train.loss == "kl"),
      d.seq_len, cache_dir, show_progress=jax.process_index() == 0)
  if jax.process_index() == 0:
    cache = build()
  distributed.barrier()
  if jax.process_index() != 0:
    cache = build()  # finds the complete cache
  m = cache.manifest
  print(f"feature cache in {cache_dir} ({len(cache.roots)} chunks): {m['tokens']:,} tokens, "
        f"{m['bytes'] / 2**30:.2f} GiB, built in {m['build_seconds']:.0f} s "
        f"({m['build_flops']:.3g} FLOPs)")
  return cache


def load_init_drafter(config, model: LoadedModel):
  """(drafter, params) of `drafter.init_from`, a `drafter.kind` drafter made for this target."""
  c = config.drafter
  drafter, params = load_drafter(c.init_from, model.cfg, model.tokenizer)
  if not isinstance(drafter, DFlashDrafter if c.kind == "dflash" else Eagle3Drafter):
    raise UserError(f"{c.init_from} is not a {c.kind} drafter; set config.drafter.kind")
  return drafter, params


def new_sft_drafter(config, model: LoadedModel, examples: list[data.Example]):
  """(drafter, params) of a new `drafter.kind` drafter; its draft vocabulary is the most
  frequent tokens of the training examples."""
  return new_drafter(config.drafter, model.cfg, config.train.seed, lambda: sum(
      np.bincount(np.asarray(e.response_ids, np.int64), minlength=model.cfg.vocab_size)
      for e in examples))


def training_loss(config, drafter, params, target_cfg):
  """(trainable params, batch loss, full drafter params of a state's trainable params) for the
  drafter's kind."""
  t = config.train
  if isinstance(drafter, DFlashDrafter):
    loss = dflash_loss.batch_loss(cfg=drafter.cfg, target_cfg=target_cfg,
                                  num_anchors=t.num_anchors, gamma=t.gamma, distill=t.loss == "kl")
    return params, loss, lambda trainable: trainable
  d2t = params["d2t"]
  loss = eagle3_loss.batch_loss(d2t_Vd=d2t, cfg=drafter.cfg, target_cfg=target_cfg,
                                ttt_steps=t.ttt_steps, ttt_decay=t.ttt_decay)
  return params["model"], loss, lambda trainable: {"model": trainable, "d2t": d2t}


def validation_examples(config, model: LoadedModel) -> list[data.Example] | None:
  """The first `validation.examples` examples of the held-out corpus `validation.corpus`, or None
  when it is empty."""
  v = config.validation
  if not v.corpus:
    return None
  if v.examples < config.train.batch_size:
    raise UserError(f"validation.examples={v.examples} is less than one batch "
                    f"(train.batch_size={config.train.batch_size}); raise it")
  return corpus_examples(v.corpus, v.examples, model, "validation.examples", "heldout")


def check_training_settings(config) -> None:
  t, kind = config.train, config.drafter.kind
  if t.loss not in ("ce", "kl"):
    raise UserError(f"train.loss={t.loss!r}; choose ce or kl")
  if config.data.feature_cache and kind != "dflash":
    raise UserError("data.feature_cache serves DFlash SFT only; set data.feature_cache=False")


def check_step_memory(config, vocab_size: int) -> None:
  """The step's largest activations (float32 logits, log-probs and their gradients)."""
  t, d, k = config.train, config.data, config.drafter.block_size
  target_logits = 2 * t.batch_size * d.seq_len * vocab_size
  drafter_logits = 3 * (t.batch_size * t.num_anchors * (k - 1)
                        * (config.drafter.draft_vocab_size or vocab_size)
                        if config.drafter.kind == "dflash" else t.ttt_steps * t.batch_size * d.seq_len
                        * config.drafter.draft_vocab_size)
  config_check.check_memory(4.0 * (target_logits + drafter_logits), "an SFT step",
                            "lower train.batch_size, data.seq_len or train.num_anchors")


def training_examples(config, model: LoadedModel, out: pathlib.Path) -> list[data.Example]:
  """The corpus's examples, or the target's responses to the training prompts (regenerated into
  the workdir once). Bad settings fail before the workdir is made."""
  if not config.drafter.init_from:
    drafter_config(config.drafter, model.cfg)  # a bad drafter setting fails before the data
  d = config.data
  examples = (corpus_examples(d.corpus, d.corpus_examples, model, "data.corpus_examples",
                              skip=d.corpus_skip) if d.corpus else None)
  prompt_ids = None if examples else training_prompts(config, model)
  out.mkdir(parents=True, exist_ok=True)
  return examples or regenerated_examples(config, model, prompt_ids, out)


def training_flops(config, drafter, target_cfg, cached_features: bool) -> dict[str, float]:
  """FLOPs of one training step, by part."""
  t, seq_len = config.train, config.data.seq_len
  if isinstance(drafter, DFlashDrafter):
    return flops.dflash_train(drafter.cfg, target_cfg, t.batch_size, seq_len, t.num_anchors,
                              cached_features=cached_features, distill=t.loss == "kl")
  return flops.eagle3_train(drafter.cfg, target_cfg, t.batch_size, seq_len, t.ttt_steps)


class BestDrafter:
  """The best held-out tau so far and its drafter (best_drafter/). best.json survives restarts,
  so a resumed run keeps the true best."""

  def __init__(self, out: pathlib.Path, drafter, model: LoadedModel):
    self.out, self.drafter, self.model = out, drafter, model
    file = out / "best.json"
    self.tau = json.loads(file.read_text())["heldout_tau"] if file.is_file() else -1.0

  def offer(self, step: int, tau: float, params: dict) -> None:
    if tau <= self.tau:
      return
    self.tau = tau
    save_drafter(self.out / "best_drafter", self.drafter, params, self.model.cfg,
                 self.model.tokenizer)
    if jax.process_index() == 0:
      (self.out / "best.json").write_text(json.dumps({"step": step, "heldout_tau": tau}))


def evaluation(run: loop.Run, step: int, used_flops: float, validation: Validation | None,
               heldout: HeldoutTau | None, best: BestDrafter, full_params) -> float:
  """Writes the validation metrics and held-out tau of the run's drafter (either may be off),
  offers it as the best drafter, and returns its held-out tau (NaN when off)."""
  if validation:
    scores = validation(run.state.params, run.target_params)
    run.writer.write(step, {**scores, "train_flops": used_flops})
    tqdm.write(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in scores.items()))
  if not heldout:
    return float("nan")
  taus = heldout(best.drafter, full_params(run.state.params), run.target_params)
  run.writer.write(step, {**taus, "train_flops": used_flops})
  tqdm.write(f"step {step}: held-out tau " + format_taus(taus))
  best.offer(step, taus["heldout_tau"], full_params(run.state.params))
  return taus["heldout_tau"]


def run_sft(config, workdir: str | None) -> dict:
  if not workdir:
    raise UserError("sft writes checkpoints and metrics: pass --workdir=DIR")
  out = pathlib.Path(workdir)
  t, d = config.train, config.data
  check_training_settings(config)
  mesh = trainer.training_mesh(config.mesh, config.sharding_rules, t.batch_size)
  model = load_model(config.model, dtype=config.dtype)
  check_step_memory(config, model.cfg.vocab_size)
  # Read before the training data, so a wrong init_from or validation set fails in seconds
  # rather than after regeneration.
  init = load_init_drafter(config, model) if config.drafter.init_from else None
  held_out_examples = validation_examples(config, model)
  examples = training_examples(config, model, out)
  drafter, params = init or new_sft_drafter(config, model, examples)
  features = target_features(config, model, drafter, examples) if d.feature_cache else None
  heldout = HeldoutTau(model, tuple(config.heldout.datasets), config.heldout.num_prompts,
                       config.heldout.max_new_tokens, d.heldout_fraction
                       ) if config.heldout.datasets else None  # datasets=() switches it off

  optimizer = loop.make_optimizer(t)
  trainable, loss, full_params = training_loss(config, drafter, params, model.cfg)
  step_fn = trainer.step_fn(trainer.loss_gradients(loss), optimizer)
  validation = Validation(loss, held_out_examples, d.seq_len, t.batch_size,
                          model.tokenizer.pad_id) if held_out_examples else None
  run = loop.Run.start(config, out, mesh, step_fn, optimizer, trainable, model.params,
                       batch_inputs=2 if features is None else 3, stream_size=len(examples))
  step_flops = training_flops(config, drafter, model.cfg, cached_features=features is not None)
  flops_per_step = sum(step_flops.values())
  rows = sharding.process_rows(mesh, config.sharding_rules, t.batch_size)

  def batch(position: int) -> tuple[np.ndarray, ...]:
    indices = loop.stream_indices(t.seed, len(examples), position, t.batch_size, rows)
    arrays = data.to_batch([examples[i] for i in indices], d.seq_len, model.tokenizer.pad_id)
    return arrays if features is None else (*arrays, features.batch(indices, d.seq_len))

  best = BestDrafter(out, drafter, model)
  evaluate = lambda step, used_flops: evaluation(run, step, used_flops, validation, heldout,
                                                 best, full_params)
  hooks = loop.Hooks(
      batch=batch, flops=lambda metrics: step_flops, evaluate=evaluate,
      record=lambda m: {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                        **{k: np.asarray(m[k]).round(4).tolist()
                           for k in ("accuracy_by_slot", "loss_by_step") if k in m}},
      postfix=lambda m: {"loss": f"{float(m['loss']):.3f}"})
  if run.step == 0:
    evaluate(0, 0.0)
  run.train(hooks, name="sft", rows=t.batch_size, flops_budget=0.0,
            steps=trainer.budget_steps(t.steps, t.flops_budget, flops_per_step),
            used_flops=run.step * flops_per_step)
  tau = evaluate(run.step, run.step * flops_per_step)  # the final drafter may be the best
  summary = f"held-out tau {tau:.3f} (best {best.tau:.3f}); " if config.heldout.datasets else ""
  run.close()
  save_drafter(out / "drafter", drafter, jax.device_get(full_params(run.state.params)), model.cfg,
               model.tokenizer)
  print(f"done: step {run.step}, {summary}drafter saved to {out / 'drafter'}")
  return {"heldout_tau": tau, "steps": run.step}
