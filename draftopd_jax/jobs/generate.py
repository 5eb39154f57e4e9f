"""`main.py` mode `generate`: the target completes prompts (from the config or a file)."""

import json
import pathlib

from tqdm import tqdm

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.data.prompts import Prompt, encode_prompts, read_prompts_file
from draftopd_jax.decoding.generate import generate
from draftopd_jax.errors import UserError
from draftopd_jax.io import LoadedModel, load_model
from draftopd_jax.sampling import SamplingConfig


def complete(model: LoadedModel, prompts: list[Prompt], *, max_new_tokens: int,
             sampling: SamplingConfig = SamplingConfig(), batch_size: int = 8,
             chat_template: bool = True, max_prompt_tokens: int | None = None,
             seed: int = 0, show_progress: bool = True) -> list[str]:
  """Completes each prompt with the target; returns the decoded completions in order."""
  if not prompts:
    raise UserError("no prompts given; set config.prompts or config.prompts_file")
  encoded = encode_prompts(model, prompts, chat_template)
  limit = max_prompt_tokens or model.cfg.max_position_embeddings - max_new_tokens
  for i, ids in enumerate(encoded):
    if len(ids) > limit:
      raise UserError(f"prompt {i} has {len(ids)} tokens, more than the limit of {limit}; "
                      "shorten it or raise config.max_prompt_tokens")
  completions = []
  with tqdm(total=len(prompts) * max_new_tokens, unit="tok", disable=not show_progress,
            desc="generating") as bar:
    for start in range(0, len(encoded), batch_size):
      rows = encoded[start:start + batch_size]
      tokens, mask = pad_batch(rows, model.tokenizer.pad_id)
      new_tokens = generate(model.cfg, model.params, tokens, mask, max_new_tokens=max_new_tokens,
                            sampling=sampling, eos_ids=model.tokenizer.eos_ids, seed=seed + start,
                            progress=bar)
      bar.update(len(rows) * max_new_tokens - sum(len(t) for t in new_tokens))  # early stops
      completions += [model.tokenizer.decode(t) for t in new_tokens]
  return completions


def run_generate(config, workdir: str | None) -> None:
  prompts = read_prompts_file(config.prompts_file) if config.prompts_file else list(config.prompts)
  sampling = SamplingConfig(**config.sampling)
  model = load_model(config.model, dtype=config.dtype)
  completions = complete(model, prompts, max_new_tokens=config.max_new_tokens, sampling=sampling,
                         batch_size=config.batch_size, chat_template=config.chat_template,
                         max_prompt_tokens=config.max_prompt_tokens or None, seed=config.seed)
  for prompt, completion in zip(prompts, completions):
    print(f"### prompt\n{prompt}\n### completion\n{completion}\n")
  if workdir:
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "completions.jsonl", "w") as f:
      for prompt, completion in zip(prompts, completions):
        f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
