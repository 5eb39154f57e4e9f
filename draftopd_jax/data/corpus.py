"""The SFT corpus: ShareGPT user turns with their history, answered by the target, as token ids.

Prompts are every user turn of the ShareGPT conversations, each with the turns before it as
context (the oldest turns are dropped until the prompt fits `max_prompt_tokens`). Conversations
are split by a hash of their id into three disjoint parts that never depend on file order:

* `heldout` (the first `heldout_fraction` of the hash range): evaluation only, never trained on;
* `reserved` (the next `reserve_fraction`): kept for later experiments that need data no drafter
  has seen (continued SFT streams, Draft-OPD prompt pools);
* `train`: the rest.

A corpus is a folder: `manifest.json` and shards `shard-NNNNN.npz`, each holding the token ids of
a fixed run of consecutive prompts and their greedy (or sampled) responses. Shards are written
whole, then renamed, then listed in the manifest (also written by rename), so a crash loses at
most the shard in progress and a restart resumes after the last listed one. The manifest records
the target's weights and tokenizer fingerprints and every generation setting; opening a folder made
with anything different is an error, never a stale corpus.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Iterator

import jax
import numpy as np

from draftopd_jax.data.prompts import is_heldout, sharegpt_conversations
from draftopd_jax.errors import UserError
from draftopd_jax.io.zoo import file_sha256

FORMAT = 1
SPLITS = ("train", "reserved", "heldout")
ShareGPTRoles = {"human": "user", "gpt": "assistant"}


@dataclasses.dataclass(frozen=True)
class CorpusSettings:
  """Everything that changes a corpus' contents (the target is fingerprinted separately)."""

  split: str = "train"
  heldout_fraction: float = 0.02
  reserve_fraction: float = 0.2
  max_prompt_tokens: int = 256
  response_tokens: int = 256
  temperature: float = 0.0
  dtype: str = "float32"
  shard_size: int = 512  # prompts per shard: the unit of progress that survives a crash


def split_of(conversation_id: str, heldout_fraction: float, reserve_fraction: float) -> str:
  """The part of the data a conversation belongs to. The held-out test is `is_heldout` itself, so
  the evaluation split is the one every earlier run used."""
  if is_heldout(conversation_id, heldout_fraction):
    return "heldout"
  digest = hashlib.sha256(conversation_id.encode()).digest()
  position = int.from_bytes(digest[:8], "big") / 2**64
  return "reserved" if position < heldout_fraction + reserve_fraction else "train"


def sharegpt_turns(split: str, heldout_fraction: float, reserve_fraction: float
                   ) -> Iterator[tuple[str, list[dict[str, str]]]]:
  """(prompt id `conversation#turn`, chat messages ending with that user turn) for every user turn
  of the ShareGPT conversations in `split`, in file order."""
  if split not in SPLITS:
    raise UserError(f"corpus split {split!r}; choose one of {SPLITS}")
  for record in sharegpt_conversations():
    if split_of(record["id"], heldout_fraction, reserve_fraction) != split:
      continue
    messages = []
    for turn in record.get("conversations") or []:
      role, text = ShareGPTRoles.get(turn.get("from")), turn.get("value", "")
      if not messages and role == "assistant":
        continue  # a conversation split mid-way starts with a reply: start at the next question
      expected = "user" if not messages or messages[-1]["role"] == "assistant" else "assistant"
      if role != expected or not text.strip():
        break  # a system note, an empty or a repeated turn: the rest is unreliable
      messages.append({"role": role, "content": text})
      if role == "user":
        yield f"{record['id']}#{len(messages) - 1}", list(messages)


def fit_prompt(encode: Callable[[list[dict[str, str]]], list[int]],
               messages: list[dict[str, str]], max_tokens: int) -> list[int] | None:
  """Token ids of the chat, dropping the oldest turns until it fits (None if the last user turn
  alone does not)."""
  while messages:
    ids = encode(messages)
    if len(ids) <= max_tokens:
      return ids
    messages = messages[1:]
    while messages and messages[0]["role"] != "user":
      messages = messages[1:]  # a chat starts with a user turn
  return None


@dataclasses.dataclass
class Shard:
  prompt_ids: list[str]
  prompts: list[list[int]]
  responses: list[list[int]]


def _ragged(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Rows as one flat id array (uint16 when every id fits, as for vocabularies up to 65,536,
  which halves the corpus on disk) and their offsets."""
  lengths = np.asarray([len(r) for r in rows], np.int32)
  flat = np.asarray([t for r in rows for t in r], np.int64)
  flat = flat.astype(np.uint16 if flat.size == 0 or flat.max() < 2**16 else np.int32)
  return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _unragged(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
  return [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def atomic_write(path: pathlib.Path, write: Callable[[str], None]) -> None:
  """`write(tmp)` then a rename over `path`: a crash leaves the old file or the new, never half."""
  tmp = path.with_name(f".{path.name}.tmp")
  write(str(tmp))
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)


def params_fingerprint(params) -> str:
  """A hash of every weight of the target (its values, not where they came from)."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    array = np.asarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


class Corpus:
  """A corpus folder: read its shards, or add more (see the module docstring)."""

  def __init__(self, root: str | pathlib.Path, settings: CorpusSettings, target: dict):
    """Opens (or starts) the corpus at `root` for `settings` and `target` (fingerprints of the
    target's weights and tokenizer); a folder made with anything else is refused."""
    self.root = pathlib.Path(root)
    self.manifest = {"format": FORMAT, "settings": dataclasses.asdict(settings), "target": target,
                     "shards": []}
    path = self.root / "manifest.json"
    if path.is_file():
      found = json.loads(path.read_text())
      for key in ("format", "settings", "target"):
        if found.get(key) != self.manifest[key]:
          raise UserError(
              f"the corpus in {self.root} was made with another {key} ({found.get(key)} != "
              f"{self.manifest[key]}); point config.data.corpus at a new folder or delete it")
      self.manifest = found
    self.settings = settings

  @classmethod
  def load(cls, root: str | pathlib.Path, target: dict) -> "Corpus":
    """Opens an existing corpus for reading, refusing one made by another target."""
    path = pathlib.Path(root) / "manifest.json"
    if not path.is_file():
      raise UserError(f"no corpus in {root} (no manifest.json); make one with "
                      "`python -m draftopd_jax.main --config=configs/corpus.py "
                      f"--config.data.corpus={root}`")
    settings = json.loads(path.read_text()).get("settings", {})
    known = {f.name for f in dataclasses.fields(CorpusSettings)}
    return cls(root, CorpusSettings(**{k: v for k, v in settings.items() if k in known}), target)

  @property
  def shards(self) -> list[dict]:
    return self.manifest["shards"]

  @property
  def num_prompts_done(self) -> int:
    return sum(s["examples"] for s in self.shards)

  def add_shard(self, shard: Shard, stats: dict) -> None:
    """Writes the next shard and lists it in the manifest (both atomically)."""
    self.root.mkdir(parents=True, exist_ok=True)
    name = f"shard-{len(self.shards):05d}.npz"
    prompt_flat, prompt_offsets = _ragged(shard.prompts)
    response_flat, response_offsets = _ragged(shard.responses)
    atomic_write(self.root / name, lambda tmp: np.savez_compressed(
        open(tmp, "wb"), prompt_ids=np.asarray(shard.prompt_ids), prompt_tokens=prompt_flat,
        prompt_offsets=prompt_offsets, response_tokens=response_flat,
        response_offsets=response_offsets))
    self.shards.append({"file": name, "sha256": file_sha256(self.root / name),
                        "examples": len(shard.prompts),
                        "prompt_tokens": int(len(prompt_flat)),
                        "response_tokens": int(len(response_flat)), **stats})
    atomic_write(self.root / "manifest.json",
                  lambda tmp: pathlib.Path(tmp).write_text(json.dumps(self.manifest, indent=1)))

  def read_shard(self, entry: dict) -> Shard:
    path = self.root / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
      raise UserError(f"corpus shard {path} is missing or damaged (checksum mismatch); delete "
                      f"it and its manifest entry, or the whole corpus folder, and regenerate")
    with np.load(path) as z:
      return Shard([str(s) for s in z["prompt_ids"]],
                   _unragged(z["prompt_tokens"], z["prompt_offsets"]),
                   _unragged(z["response_tokens"], z["response_offsets"]))

  def examples(self, limit: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of the first `limit` examples (all by default), in order."""
    out = []
    for entry in self.shards:
      shard = self.read_shard(entry)
      out += list(zip(shard.prompts, shard.responses))
      if limit is not None and len(out) >= limit:
        return out[:limit]
    return out

  def totals(self) -> dict:
    keys = ("examples", "prompt_tokens", "response_tokens", "seconds", "generated_slots")
    return {k: sum(s.get(k, 0) for s in self.shards) for k in keys}
