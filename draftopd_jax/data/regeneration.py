"""`main.py` mode `corpus`: the target answers ShareGPT user turns; the answers fill a `Corpus`.

A shard's prompts are generated in order of length, batch by batch (or with continuous batching,
an option: see `generate_shard`). The progress bar counts generated tokens and shows tokens/s.
A single process with several devices splits each batch's rows over them; every process of a
multi-process run generates (one SPMD computation), and process 0 writes. A stopped run resumes
at the first shard not in the manifest.
"""

import dataclasses
import itertools
import pathlib
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding
from tqdm import tqdm

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.data.corpus import (Corpus, CorpusSettings, Shard, fit_prompt, params_fingerprint,
                                      sharegpt_turns)
from draftopd_jax.decoding import continuous, engine
from draftopd_jax.errors import UserError
from draftopd_jax.io import LoadedModel, load_model
from draftopd_jax.parallel import distributed, sharding
from draftopd_jax.sampling import SamplingConfig


def settings_of(config) -> CorpusSettings:
  d = config.data
  return CorpusSettings(split=d.split, heldout_fraction=d.heldout_fraction,
                        reserve_fraction=d.reserve_fraction, max_prompt_tokens=d.max_prompt_tokens,
                        response_tokens=d.response_tokens, temperature=d.temperature,
                        dtype=config.dtype, shard_size=d.shard_size)


def target_fingerprints(model: LoadedModel) -> dict:
  return {"weights": params_fingerprint(model.params), "tokenizer": model.tokenizer.fingerprint}


def open_corpus(root: str | pathlib.Path, settings: CorpusSettings, model: LoadedModel) -> Corpus:
  return Corpus(root, settings, target_fingerprints(model))


def load_corpus(root: str | pathlib.Path, model: LoadedModel) -> Corpus:
  """An existing corpus, checked to be `model`'s own."""
  return Corpus.load(root, target_fingerprints(model))


def fitted_prompts(model: LoadedModel, settings: CorpusSettings
                   ) -> Iterator[tuple[str, list[int]]]:
  """(prompt id, token ids) of every user turn of the split that fits, in a fixed order."""
  encode = lambda messages: model.tokenizer.encode(model.tokenizer.apply_chat_template(messages))
  for prompt_id, messages in sharegpt_turns(settings.split, settings.heldout_fraction,
                                            settings.reserve_fraction):
    ids = fit_prompt(encode, messages, settings.max_prompt_tokens)
    if ids is not None:
      yield prompt_id, ids


def rows_sharding() -> NamedSharding | None:
  """Batch rows split over this process's devices, or None with one device (and in a
  multi-process run, where each process runs the whole batch). On CPU, two fake devices with one
  thread each decode faster than one device with two threads (docs/data.md)."""
  if jax.process_count() > 1 or jax.local_device_count() == 1:
    return None
  return sharding.batch_sharding(sharding.make_mesh(), sharding.DEFAULT_RULES)


def generate_shard(model: LoadedModel, prompts: list[list[int]], settings: CorpusSettings,
                   batch_size: int, continuous_batching: bool, bar: tqdm, seed: int,
                   split: NamedSharding | None = None) -> tuple[list[list[int]], int]:
  """Responses in prompt order, and the decode slots spent (steps x rows; with the response
  tokens, how busy the batch was). Prompts go in by length, so the rows of a batch (or the rows
  refilled together) pad to nearly the same width.

  Batch by batch, each batch runs to its longest answer; with `continuous_batching` a finished
  row takes the next prompt instead, but every row then attends over a buffer sized for the
  longest prompt of the shard, which on CPU cost more than the idle rows it saves (docs/data.md).
  `split` (batch by batch only) shards each batch's rows over devices.
  """
  order = np.argsort([len(p) for p in prompts], kind="stable")
  sorted_prompts = [prompts[i] for i in order]
  sampling = SamplingConfig(temperature=settings.temperature)
  tokenizer = model.tokenizer
  if continuous_batching:
    responses, slots = continuous.generate_all(
        model.cfg, model.params, sorted_prompts, batch_size=batch_size,
        max_new_tokens=settings.response_tokens, pad_id=tokenizer.pad_id,
        eos_ids=tokenizer.eos_ids, sampling=sampling, seed=seed, progress=bar)
  else:
    responses, slots = [], 0
    for start in range(0, len(sorted_prompts), batch_size):
      rows = sorted_prompts[start:start + batch_size]
      prompt_BxP, mask_BxP = pad_batch(rows, tokenizer.pad_id)
      if split is not None and len(rows) % split.num_devices == 0:
        prompt_BxP, mask_BxP = jax.device_put((prompt_BxP, mask_BxP), split)
      # The rows are of nearly one length already: one prefill, which keeps their sharding.
      state = engine.run(model.cfg, model.params, prompt_BxP, mask_BxP,
                         max_new_tokens=settings.response_tokens, sampling=sampling,
                         eos_ids=tokenizer.eos_ids, seed=seed + start, progress=bar,
                         prefill_rows=len(rows))
      responses += engine.new_tokens(state)
      slots += (int(state.step) + 1) * len(rows)  # + 1: the prefill's token
  in_order: list[list[int]] = [[] for _ in prompts]
  for i, response in zip(order, responses):
    in_order[i] = response
  return in_order, slots


def build(config, root: str | pathlib.Path, model: LoadedModel | None = None) -> Corpus:
  """Adds shards to the corpus at `root` until it holds `config.data.num_prompts` prompts."""
  d = config.data
  model = model or load_model(config.model, dtype=config.dtype)
  split = None if d.continuous_batching else rows_sharding()
  if split is not None:
    model = dataclasses.replace(model, params=jax.device_put(model.params,
                                                             sharding.replicated(split.mesh)))
  settings = settings_of(config)
  corpus = open_corpus(root, settings, model)
  distributed.barrier("corpus-manifest-read")
  done = corpus.num_prompts_done
  stream = itertools.islice(fitted_prompts(model, settings), done, d.num_prompts)
  writer = jax.process_index() == 0
  with tqdm(desc=f"corpus {settings.split}", unit="tok", disable=not writer,
            postfix={"prompts": done}) as bar:
    while batch := list(itertools.islice(stream, settings.shard_size)):
      start = time.perf_counter()
      ids, prompts = zip(*batch)
      responses, slots = generate_shard(model, list(prompts), settings, d.regen_batch_size,
                                        d.continuous_batching, bar, seed=config.seed + done,
                                        split=split)
      seconds = time.perf_counter() - start
      if writer:
        corpus.add_shard(Shard(list(ids), list(prompts), responses),
                         {"seconds": round(seconds, 1), "generated_slots": slots})
      done += len(batch)
      bar.set_postfix(prompts=done)
      distributed.barrier("corpus-shard")
  if corpus.num_prompts_done == 0 and writer:
    raise UserError(f"no {settings.split} prompt of the data fits max_prompt_tokens="
                    f"{settings.max_prompt_tokens}")
  return corpus
