"""`main.py` mode `eval`: acceptance and speed of a drafter on held-out prompt sets.

For each prompt (batch 1, as speedups are defined) the target decodes autoregressively and
speculatively with the drafter, in the same engine; decode-phase time is measured for both (the
prefill is excluded), and the outputs are compared (greedy decoding must be lossless). Writes
`results.json` and PNG plots to the workdir and prints a table.
"""

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.data.prompts import encode_prompts, eval_prompts, sharegpt_prompts
from draftopd_jax.decoding import engine
from draftopd_jax.errors import UserError
from draftopd_jax.evaluation import metrics, plots
from draftopd_jax.io import LoadedModel, load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter
from draftopd_jax.jobs.new_drafter import new_drafter
from draftopd_jax.models.drafters import (Autoregressive, DraftModel, Oracle, Truncated,
                                          draft_model_params)
from draftopd_jax.sampling import SamplingConfig

DRAFTER_KINDS = ("dflash", "eagle3", "oracle", "draft_model")


def build_drafter(c, model: LoadedModel):
  """(drafter, params) from `config.drafter`: a checkpoint, or an untrained one of `kind`,
  verifying `verify_block` tokens per step if set.

  The oracle's params depend on the prompt and are filled in per prompt (None here).
  """
  drafter, params = _whole_block_drafter(c, model)
  if not c.verify_block:
    return drafter, params
  if not 2 <= c.verify_block <= drafter.block_size:
    raise UserError(f"config.drafter.verify_block={c.verify_block}: a verify pass holds the "
                    f"anchor and 1 to {drafter.block_size - 1} proposals of this drafter; pass "
                    f"2 to {drafter.block_size}, or 0 for its whole block")
  return Truncated(drafter, c.verify_block), params


def _whole_block_drafter(c, model: LoadedModel):
  if c.kind not in DRAFTER_KINDS:
    raise UserError(f"config.drafter.kind={c.kind!r}; choose one of {', '.join(DRAFTER_KINDS)}")
  if c.checkpoint:
    return load_drafter(c.checkpoint, model.cfg, model.tokenizer)
  if c.kind == "oracle":
    return Oracle(block_size=c.block_size), None
  if c.kind == "draft_model":
    return load_draft_model(c.model, c.block_size, model)
  # An EAGLE-3 draft vocabulary: the most frequent target tokens of ShareGPT training prompts.
  return new_drafter(c, model.cfg, c.seed, lambda: sum(
      np.bincount(ids, minlength=model.cfg.vocab_size)
      for ids in encode_prompts(model, sharegpt_prompts("train", 500), chat_template=False)))


def load_draft_model(name_or_path: str, block_size: int, target: LoadedModel):
  """A smaller LM as the drafter; its tokenizer must be the target's (the same ids, the same
  tokens), else its proposals would be other words."""
  if not name_or_path:
    raise UserError("config.drafter.model is empty: name the draft model (a zoo name, a .gguf "
                    "file or a Hugging Face folder)")
  draft = load_model(name_or_path, dtype=target.cfg.dtype)
  if draft.tokenizer.fingerprint != target.tokenizer.fingerprint:
    raise UserError(f"draft model {name_or_path} has another vocabulary (tokenizer "
                    f"{draft.tokenizer.fingerprint}) than the target (tokenizer "
                    f"{target.tokenizer.fingerprint}); use a draft model with the target's tokenizer")
  return (DraftModel(draft.cfg, block_size, target.cfg.vocab_size),
          draft_model_params(draft.cfg, draft.params))


def timed_decode(model: LoadedModel, tokens, mask, drafter, params, max_new_tokens: int,
                 eos_ids: tuple[int, ...], verify_impl: str = "auto"
                 ) -> tuple[float, int, engine.DecodeState]:
  """(decode seconds, tokens generated after the prefill's first, final state) of one batch."""
  statics = dict(max_new_tokens=max_new_tokens, sampling=SamplingConfig(), eos_ids=eos_ids)
  target_layers = engine.layer_params(model.cfg, model.params)
  state = engine.prefill(model.cfg, model.params, drafter, params, tokens, mask,
                         jax.random.key(0), **statics)
  jax.block_until_ready((state, target_layers))
  start = time.perf_counter()
  state = engine.decode(model.cfg, model.params, drafter, params, state,
                        jnp.int32(max_new_tokens), verify_impl=verify_impl,
                        target_layers=target_layers, **statics)
  jax.block_until_ready(state)
  generated = int(jnp.sum(state.lengths_B - state.prompt_lens_B)) - len(state.lengths_B)
  return time.perf_counter() - start, generated, state


def decode_both(model: LoadedModel, width: int, drafter, params, config):
  """(ids -> (autoregressive, speculative) `timed_decode` results) at one prompt width for every
  prompt of every set, so both decoding loops compile once."""

  eos = model.tokenizer.eos_ids

  def ar_then_spec(ids: list[int]):
    tokens, mask = pad_batch([ids], model.tokenizer.pad_id, width=width)
    ar = timed_decode(model, tokens, mask, Autoregressive(), None, config.max_new_tokens, eos,
                      config.verify_impl)
    prompt_params = params
    if isinstance(drafter.inner if isinstance(drafter, Truncated) else drafter, Oracle):
      # The target's own continuation, padded past a block.
      prompt_params = jnp.pad(ar[2].tokens_BxS, ((0, 0), (0, drafter.block_size)))
    return ar, timed_decode(model, tokens, mask, drafter, prompt_params, config.max_new_tokens,
                            eos, config.verify_impl)

  return ar_then_spec


def evaluate_dataset(name: str, encoded: list[list[int]], ar_then_spec, block_size: int) -> dict:
  ar_tpot, spec_tpot, lengths, lossless = [], [], [], True
  for ids in tqdm(encoded, desc=name, unit="prompt"):
    (ar_seconds, ar_count, ar_state), (spec_seconds, spec_count, spec_state) = ar_then_spec(ids)
    lossless &= engine.new_tokens(ar_state) == engine.new_tokens(spec_state)
    if ar_count and spec_count:
      ar_tpot.append(ar_seconds / ar_count)
      spec_tpot.append(spec_seconds / spec_count)
    lengths += metrics.acceptance_lengths(spec_state.trace)
  summary = metrics.summarize(lengths, block_size)
  summary.update(num_prompts=len(encoded), lossless=bool(lossless),
                 ar_tokens_per_s=float(1 / np.mean(ar_tpot)) if ar_tpot else float("nan"),
                 spec_tokens_per_s=float(1 / np.mean(spec_tpot)) if spec_tpot else float("nan"),
                 speedup=metrics.speedup(ar_tpot, spec_tpot) if ar_tpot else float("nan"))
  return summary


def run_eval(config, workdir: str | None) -> dict:
  if not workdir:
    raise UserError("eval writes results.json and plots: pass --workdir=DIR")
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  model = load_model(config.model, dtype=config.dtype)
  drafter, params = build_drafter(config.drafter, model)
  results = {"model": config.model, "drafter": config.drafter.checkpoint or (
      f"draft model {config.drafter.model}" if config.drafter.kind == "draft_model" else
      f"untrained {config.drafter.kind}"), "block_size": drafter.block_size,
             "max_new_tokens": config.max_new_tokens, "datasets": {}}
  sets = {name: encode_prompts(model, eval_prompts(name, config.num_prompts,
                                                   config.heldout_fraction), config.chat_template)
          for name in config.datasets}
  # One prompt width for every set, so nothing recompiles inside a timed region.
  width = pad_batch([ids for encoded in sets.values() for ids in encoded],
                    model.tokenizer.pad_id)[0].shape[1]
  ar_then_spec = decode_both(model, width, drafter, params, config)
  ar_then_spec(next(iter(sets.values()))[0])  # compiles both loops; discarded
  for name, encoded in sets.items():
    results["datasets"][name] = evaluate_dataset(name, encoded, ar_then_spec, drafter.block_size)
  (out / "results.json").write_text(json.dumps(results, indent=1))
  plots.plot_acceptance(results, out)
  print(f"\n{'dataset':<10} {'tau':>6} {'tau_tok':>8} {'AR tok/s':>9} {'spec tok/s':>11} "
        f"{'speedup':>8} lossless")
  for name, r in results["datasets"].items():
    print(f"{name:<10} {r['tau']:>6.2f} {r['tau_token_weighted']:>8.2f} {r['ar_tokens_per_s']:>9.1f} "
          f"{r['spec_tokens_per_s']:>11.1f} {r['speedup']:>7.2f}x {r['lossless']}")
  print(f"results: {out / 'results.json'}")
  return results
