"""SFT of a DFlash or EAGLE-3 drafter for SmolLM2-135M-Instruct on target-regenerated ShareGPT
responses.

Run (2 CPU cores; resumes from WORKDIR/checkpoints when started again):
  python -m draftopd_jax.main --config=configs/sft.py --workdir=/tmp/sft_dflash
  python -m draftopd_jax.main --config=configs/sft.py:eagle3 --workdir=/tmp/sft_eagle3
  python -m draftopd_jax.main --config=configs/sft.py:quick --workdir=/tmp/sft_quick  # smoke runs
  python -m draftopd_jax.main --config=configs/sft.py:eagle3_quick --workdir=/tmp/sft_e3_quick
On an accelerator pod (see launch/), a Qwen3-8B-class target from a local Hugging Face folder:
  python -m draftopd_jax.main --config=configs/sft.py:qwen3_8b_pod --workdir=gs://BUCKET/sft \
      --config.model=checkpoints/Qwen3-8B
Then evaluate the result:
  python -m draftopd_jax.main --config=configs/eval.py \
      --config.drafter.checkpoint=/tmp/sft_dflash/best_drafter --workdir=/tmp/eval_sft

Outputs in the workdir: data/responses-*.jsonl (regenerated token ids), checkpoints/ (orbax),
metrics.jsonl and tensorboard/ (loss, accuracy per block slot, held-out tau, FLOPs, seconds per
step), best_drafter/ and drafter/ (drafter checkpoints).

Expected (2 CPU cores, measured in docs/sft.md): DFlash 2.6 s/step, held-out tau from 1.00
(untrained) to 1.17 after 1,000 steps (50 minutes); EAGLE-3 9.2 s/step, 1.00 to 1.16 after 100.

`:plateau` is the SFT-to-plateau run of the paper-reproduction experiment: the DFlash recipe for
2,600 steps (about 2 hours), held-out tau on HumanEval, MT-Bench and ShareGPT every 200 steps.
"""

import ml_collections

from draftopd_jax.parallel import sharding

VARIANTS = ("dflash", "eagle3", "quick", "eagle3_quick", "qwen3_8b_pod", "plateau")


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
      target_layer_ids=(),  # target layers whose outputs feed the drafter; () = the default
      init_from="",  # a drafter checkpoint to start from (weights only)
  ))
  c.data = ml_collections.ConfigDict(dict(
      # "sharegpt" (the packaged ShareGPT train split), a .txt/.jsonl file ({"prompt": text} or
      # chat {"messages": [...]}, optional "id"), or "tfds:NAME[:SPLIT]" (pip install -e ".[tfds]")
      source="sharegpt",
      tfds_field="prompt", tfds_data_dir="",  # TFDS: the text feature; "" = TFDS's default dir
      num_prompts=1024,
      heldout_fraction=0.02,  # ShareGPT conversations held out by id, never trained on
      max_prompt_tokens=192,  # longer prompts are skipped
      response_tokens=128,  # target-regenerated response length (EOS may end it earlier)
      temperature=0.0,  # regeneration: 0 = greedy
      regen_batch_size=16,
      seq_len=320,  # prompt + response, padded or truncated
  ))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=4, learning_rate=6e-4, warmup_steps=50, weight_decay=0.01,
      grad_clip=1.0, num_anchors=16, gamma=0.0,  # gamma > 0: slot weights exp(-(k-1)/gamma)
      loss="ce",  # DFlash: "ce" to the regenerated token, or "kl" to the target distribution
      ttt_steps=7, ttt_decay=0.8,  # EAGLE-3 training-time test: steps, step weight decay**s
      seed=0,
  ))
  c.heldout = ml_collections.ConfigDict(dict(
      datasets=("humaneval", "mtbench"), num_prompts=8, max_new_tokens=64))
  # Devices: a ("data", "fsdp", "tensor") mesh (-1 = the devices the other axes leave) and the
  # rules mapping logical axes (parallel/sharding.py: PARAM_AXES) to mesh axes.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = sharding.DEFAULT_RULES
  c.tensorboard = True
  c.eval_every = 100
  c.log_every = 10
  c.checkpoint_every = 50
  c.keep_checkpoints = 3
  if variant == "plateau":
    c.train.update(steps=2600, warmup_steps=100)
    c.heldout.datasets = ("humaneval", "mtbench", "sharegpt")
    c.eval_every, c.checkpoint_every = 200, 100
  if variant == "eagle3":  # ~9 s/step on 2 CPU cores: 7 target-aligned TTT steps per batch
    c.train.steps, c.eval_every = 200, 20
  if variant.endswith("quick"):
    c.data.num_prompts, c.data.response_tokens, c.data.seq_len = 16, 16, 224
    c.train.steps, c.train.batch_size, c.train.num_anchors, c.train.warmup_steps = 6, 2, 4, 2
    c.train.ttt_steps, c.drafter.draft_vocab_size = 3, 2048
    c.heldout.num_prompts, c.heldout.max_new_tokens, c.heldout.datasets = 2, 16, ("humaneval",)
    c.eval_every, c.log_every, c.checkpoint_every = 3, 1, 2
  if variant == "qwen3_8b_pod":
    # The paper's DFlash recipe for Qwen3-8B (digest §3.1, §4): 5 layers, block 16, LR 3e-4 with
    # 5% warmup; long responses, bf16, FSDP over 8 chips per data replica (e.g. TPU v5p-32 or
    # 2 x 8 H100/H200: 16 chips, data=2 x fsdp=8).
    c.model = "checkpoints/Qwen3-8B"  # a local HF folder (config.json, *.safetensors, tokenizer)
    c.dtype = "bfloat16"
    c.drafter.update(num_layers=5, block_size=16, mask_token_id=151669)  # an unused embedding row
    c.data.update(num_prompts=800_000, max_prompt_tokens=512, response_tokens=2048,
                  regen_batch_size=256, seq_len=2560)
    c.train.update(steps=20_000, batch_size=64, learning_rate=3e-4, warmup_steps=1000,
                   num_anchors=256, gamma=7.0)
    c.heldout.update(datasets=("humaneval", "mtbench", "sharegpt"), num_prompts=32,
                     max_new_tokens=256)
    c.mesh.update(data=-1, fsdp=8, tensor=1)
    c.eval_every, c.log_every, c.checkpoint_every = 1000, 10, 500
  return c
