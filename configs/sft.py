"""SFT of a DFlash or EAGLE-3 drafter for SmolLM2-135M-Instruct on target-regenerated ShareGPT
responses.

Run (2 CPU cores; resumes from WORKDIR/checkpoints when started again):
  python -m draftopd_jax.main --config=configs/sft.py --workdir=/tmp/sft_dflash
  python -m draftopd_jax.main --config=configs/sft.py:eagle3 --workdir=/tmp/sft_eagle3
  python -m draftopd_jax.main --config=configs/sft.py:quick --workdir=/tmp/sft_quick  # smoke runs
  python -m draftopd_jax.main --config=configs/sft.py:eagle3_quick --workdir=/tmp/sft_e3_quick
Then evaluate the result:
  python -m draftopd_jax.main --config=configs/eval.py \
      --config.drafter.checkpoint=/tmp/sft_dflash/best_drafter --workdir=/tmp/eval_sft

Outputs in the workdir: data/responses-*.jsonl (regenerated token ids), checkpoints/ (orbax),
metrics.jsonl (loss, accuracy per block slot, held-out tau, FLOPs, seconds per step),
best_drafter/ and drafter/ (drafter checkpoints).
"""

import ml_collections

VARIANTS = ("dflash", "eagle3", "quick", "eagle3_quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "dflash"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/sft.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "sft"
  c.model = "smollm2-135m-instruct"
  c.dtype = "float32"
  c.drafter = ml_collections.ConfigDict(dict(
      kind="eagle3" if variant.startswith("eagle3") else "dflash",
      block_size=8,  # K: anchor + 7 proposals
      num_layers=2,  # DFlash
      mask_token_id=0,  # DFlash MASK: SmolLM2's <|endoftext|>, never inside chats
      draft_vocab_size=8192,  # EAGLE-3: the most frequent tokens of the regenerated responses
      init_from="",  # a drafter checkpoint to start from (weights only)
  ))
  c.data = ml_collections.ConfigDict(dict(
      prompts_file="",  # .txt or .jsonl; empty = the ShareGPT train split
      num_prompts=1024,
      heldout_fraction=0.02,  # ShareGPT conversations held out by id, never trained on
      max_prompt_tokens=192,  # longer prompts are skipped
      response_tokens=128,  # target-regenerated response length (EOS may end it earlier)
      temperature=0.0,  # regeneration: 0 = greedy
      regen_batch_size=16,
      seq_len=320,  # prompt + response, padded or truncated
  ))
  c.train = ml_collections.ConfigDict(dict(
      steps=2000, batch_size=8, learning_rate=6e-4, warmup_steps=50, weight_decay=0.01,
      grad_clip=1.0, num_anchors=16, gamma=0.0,  # gamma > 0: slot weights exp(-(k-1)/gamma)
      loss="ce",  # DFlash: "ce" to the regenerated token, or "kl" to the target distribution
      ttt_steps=7, ttt_decay=0.8,  # EAGLE-3 training-time test: steps, step weight decay**s
      seed=0,
  ))
  c.heldout = ml_collections.ConfigDict(dict(
      datasets=("humaneval", "mtbench"), num_prompts=4, max_new_tokens=64))
  c.eval_every = 100
  c.log_every = 10
  c.checkpoint_every = 50
  c.keep_checkpoints = 3
  if variant.endswith("quick"):
    c.data.num_prompts, c.data.response_tokens, c.data.seq_len = 16, 16, 224
    c.train.steps, c.train.batch_size, c.train.num_anchors, c.train.warmup_steps = 6, 2, 4, 2
    c.train.ttt_steps, c.drafter.draft_vocab_size = 3, 2048
    c.heldout.num_prompts, c.heldout.max_new_tokens, c.heldout.datasets = 2, 16, ("humaneval",)
    c.eval_every, c.log_every, c.checkpoint_every = 3, 1, 2
  return c
