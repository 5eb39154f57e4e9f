"""Generate completions with the target model (the autoregressive baseline).

Run (greedy, the embedded SmolLM2-135M-Instruct target, fp32 on CPU):
  python -m draftopd_jax.main --config=configs/generate.py
Variants and overrides:
  python -m draftopd_jax.main --config=configs/generate.py:sample --config.max_new_tokens=64
  python -m draftopd_jax.main --config=configs/generate.py --config.prompts_file=prompts.jsonl \
      --workdir=/tmp/gen   # also writes completions.jsonl there

Expected: for the default prompts, a Python `sum_list` function and "The capital of France is
Paris." in about a minute on 2 CPU cores (most of it compilation).
"""

import ml_collections

VARIANTS = ("greedy", "sample")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "greedy"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/generate.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "generate"
  # A zoo name (see draftopd_jax/io/zoo.py), a .gguf file or a Hugging Face folder.
  c.model = "smollm2-135m-instruct"
  c.dtype = "float32"  # "bfloat16" on accelerators
  c.prompts = ("Write a Python function that returns the sum of a list.",
               "What is the capital of France?")
  # A .txt file (one prompt per line) or .jsonl ({"prompt": ...} per line); replaces `prompts`.
  c.prompts_file = ""
  c.chat_template = True  # wrap each prompt as a user turn with the model's template
  c.max_new_tokens = 128
  c.max_prompt_tokens = 0  # 0: the model's context length minus max_new_tokens
  c.batch_size = 8
  c.seed = 0
  c.sampling = ml_collections.ConfigDict(dict(temperature=0.0, top_k=0, top_p=1.0))
  if variant == "sample":
    c.sampling.temperature, c.sampling.top_p = 0.7, 0.9
  return c.lock()  # a misspelt key in a file that builds on this one fails where it is set
