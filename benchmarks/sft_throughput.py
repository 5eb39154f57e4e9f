"""Labelled tokens per second of DFlash SFT on this machine: the target online (its forward in
every step) against the feature cache (sft/feature_cache.py), at several anchor counts, and with
the cache, the whole vocabulary against a draft vocabulary of the most frequent response tokens
(`drafter.draft_vocab_size`).

  python benchmarks/sft_throughput.py [--runs 3] [--anchors 16,48] [--batch 4] [--draft-vocab 16384]

Examples: the committed corpus (corpora/), prompt + response up to 512 tokens. The drafter:
configs/sft.py's recipe. A labelled token is one trained (anchor, slot) pair. Settings alternate
step by step; medians. The last line is JSON, with the cache's one-off build rate so that the
rate over a whole run can be worked out: per epoch, the cache costs one target forward per
example, which the online setting pays in every epoch.
"""

import argparse
import json
import pathlib
import runpy
import tempfile
import time

import jax
import numpy as np
from side_by_side import interleaved_medians

from draftopd_jax.data.regeneration import load_corpus
from draftopd_jax.io import load_model
from draftopd_jax.jobs.new_drafter import drafter_config
from draftopd_jax.models import dflash, eagle3
from draftopd_jax.sft import data, dflash_loss, feature_cache
from draftopd_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEQ_LEN = 512


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--anchors", default="16,48")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--draft-vocab", type=int, default=16384,
                      help="the draft vocabulary size to compare (0: none)")
  args = parser.parse_args()
  config = runpy.run_path(str(ROOT / "configs" / "sft.py"))["get_config"]()
  corpus_config = runpy.run_path(str(ROOT / "configs" / "corpus.py"))["get_config"]()
  model = load_model(config.model)
  examples = [data.Example(tuple(p), tuple(r)) for p, r in
              load_corpus(ROOT / corpus_config.data.corpus, model).examples(
                  args.batch * (args.runs + 1))]
  drafter_cfg = drafter_config(config.drafter, model.cfg)
  with tempfile.TemporaryDirectory() as cache_dir:
    started = time.perf_counter()
    cache = feature_cache.build([(e.prompt_ids, e.response_ids) for e in examples], model.cfg,
                                model.params, "benchmark", drafter_cfg.target_layer_ids, SEQ_LEN,
                                cache_dir, show_progress=False)
    build_seconds = time.perf_counter() - started  # compilation included: an upper bound

    counts = sum(np.bincount(response, minlength=model.cfg.vocab_size) for _, response in
                 load_corpus(ROOT / corpus_config.data.corpus, model).examples(None))

    def contender(num_anchors: int, cached: bool, draft_vocab: int = 0):
      cfg = drafter_config(config.drafter, model.cfg, tuple(
          eagle3.build_draft_vocab(counts, draft_vocab).tolist()) if draft_vocab else ())
      optimizer = trainer.make_optimizer(1e-4, 10, 1000)
      step = jax.jit(dflash_loss.step_fn(cfg=cfg, target_cfg=model.cfg, optimizer=optimizer,
                                         num_anchors=num_anchors, gamma=config.train.gamma,
                                         distill=False),
                     donate_argnums=0)
      box = {"state": trainer.init_state(dflash.init_params(cfg), optimizer, 0), "at": 0}

      def one_step() -> int:
        indices = [(box["at"] + i) % len(examples) for i in range(args.batch)]
        box["at"] += args.batch
        batch = data.to_batch([examples[i] for i in indices], SEQ_LEN, model.tokenizer.pad_id)
        if cached:
          batch += (cache.batch(indices, SEQ_LEN),)
        box["state"], metrics = step(box["state"], model.params, *batch)
        return int(metrics["tokens"])
      return one_step

    anchors = list(map(int, args.anchors.split(",")))
    contenders = {f"{'cached' if cached else 'online'}_{n}": contender(n, cached)
                  for n in anchors for cached in (False, True)}
    if args.draft_vocab:
      contenders |= {f"cached_{n}_vocab{args.draft_vocab}": contender(n, True, args.draft_vocab)
                     for n in anchors}
    rates = interleaved_medians(contenders, args.runs)
  tokens = cache.manifest["tokens"]
  print(json.dumps({"labelled_tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
                    "batch": args.batch, "seq_len": SEQ_LEN,
                    "drafter_layers": drafter_cfg.num_layers,
                    "taps": list(drafter_cfg.target_layer_ids),
                    "cache_build_tokens_per_s": round(tokens / build_seconds, 1),
                    "cache_bytes_per_token": cache.manifest["bytes"] // tokens}))


if __name__ == "__main__":
  main()
