"""Regenerate the SFT corpus: the target answers ShareGPT user turns (with their history).

Run (2 CPU cores; stopped and started again, it resumes at the first unfinished shard). The
default extends the corpus committed with the project (corpora/, about 8 MB when complete):
  python -m draftopd_jax.main --config=configs/corpus.py
On a CPU, one fake device per core with one thread each splits each batch's rows and decodes
about 18% faster than one device with every thread (docs/data.md):
  XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false \
    intra_op_parallelism_threads=1" python -m draftopd_jax.main --config=configs/corpus.py
The slice reserved for later experiments (never used by the SFT of the shipped drafter):
  python -m draftopd_jax.main --config=configs/corpus.py:reserved
Held-out answers for SFT's validation loss (`configs/sft.py`, `config.validation.corpus`;
the conversations every evaluation holds out, never trained on):
  python -m draftopd_jax.main --config=configs/corpus.py:heldout
A small smoke run:
  python -m draftopd_jax.main --config=configs/corpus.py:quick --workdir=/tmp/corpus_quick

Outputs: CORPUS/manifest.json (settings, target fingerprints, per shard: prompts, tokens,
seconds, decode slots) and CORPUS/shard-*.npz (token ids). `configs/sft.py` reads it through
`config.data.corpus`.
"""

import ml_collections

VARIANTS = ("train", "reserved", "heldout", "quick")
CORPORA = "corpora/smollm2-135m-instruct"  # committed corpora, relative to the repository root


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "train"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/corpus.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "corpus"
  c.model = "smollm2-135m-instruct"
  c.dtype = "float32"
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      corpus=f"{CORPORA}/{variant}",  # the corpus folder; "" = WORKDIR/corpus
      split=variant if variant in ("reserved", "heldout") else "train",
      heldout_fraction=0.02,  # conversations for evaluation only (the split every run uses)
      reserve_fraction=0.2,  # conversations kept for later experiments (configs/corpus.py:reserved)
      num_prompts=16_384,  # user turns to answer: about 2M response tokens at 256 tokens each
      max_prompt_tokens=256,  # the oldest turns of a longer chat are dropped until it fits
      response_tokens=256,
      temperature=0.0,  # 0 = greedy
      shard_size=512,
      regen_batch_size=64,
      # True: a finished row takes the next prompt (decoding/continuous.py). Off by default: on
      # CPU the longer shared buffer cost more attention than the idle rows it saved (docs/data.md).
      continuous_batching=False,
  ))
  if variant == "reserved":
    c.data.num_prompts = 4096
  if variant == "heldout":
    c.data.update(num_prompts=256, shard_size=128)
  if variant == "quick":
    c.data.update(corpus="", num_prompts=6, shard_size=4, regen_batch_size=4, response_tokens=8,
                  max_prompt_tokens=128)
  return c.lock()  # a misspelt key in a file that builds on this one fails where it is set
