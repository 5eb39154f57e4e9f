"""Tokenizer and chat template, built from GGUF metadata or a Hugging Face folder (no PyTorch).

GGUF stores a byte-level BPE as its vocabulary, merges and token types; the pre-tokenizer is named
by `tokenizer.ggml.pre` and must be rebuilt to match the original tokenizer (llama.cpp keeps a
table of the regexes behind each name).
"""

import functools
import hashlib
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from draftopd_jax.errors import UserError

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that are matched before BPE
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool = True) -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def _split_then_bytes(regex: str) -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(regex), behavior="isolated"), _byte_level(use_regex=False)])


# `tokenizer.ggml.pre` -> the pre-tokenizer of the original Hugging Face tokenizer.
PRE_TOKENIZERS = {
    "default": _byte_level,
    "gpt-2": _byte_level,
    # StarCoder-style vocabularies (SmolLM, StarCoder, Refact): single digits, then GPT-2 regex.
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               _byte_level()]),
    "starcoder": lambda: PRE_TOKENIZERS["smollm"](),
    "refact": lambda: PRE_TOKENIZERS["smollm"](),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_REGEX),
    "qwen2": lambda: _split_then_bytes(_QWEN2_REGEX),
}


def _raise(message: str):
  raise jinja2.TemplateError(message)


class Tokenizer:
  """Text <-> token ids, plus the model's chat template and end-of-sequence ids."""

  def __init__(self, backend: BackendTokenizer, chat_template: str | None,
               special_tokens: dict[str, str | None], eos_ids: Sequence[int], add_bos: bool):
    self.backend = backend
    self.chat_template = chat_template
    self.special_tokens = special_tokens
    self.eos_ids = tuple(eos_ids)
    self.add_bos = add_bos
    bos = special_tokens.get("bos_token")
    self.bos_id = backend.token_to_id(bos) if bos else None
    pad = special_tokens.get("pad_token") or special_tokens.get("eos_token")
    self.pad_id = backend.token_to_id(pad) if pad else 0

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size()

  @functools.cached_property
  def fingerprint(self) -> str:
    """A short hash of the vocabulary (token strings and ids): equal vocabularies, equal hash."""
    vocab = sorted(self.backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    ids = self.backend.encode(text, add_special_tokens=False).ids
    if add_special_tokens and self.add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: list[dict[str, str]],
                          add_generation_prompt: bool = True) -> str:
    """Renders messages with the model's own Jinja template, as transformers does."""
    if not self.chat_template:
      raise UserError("this tokenizer has no chat template; set config.chat_template=False to "
                      "feed prompts as raw text")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    template = env.from_string(self.chat_template)
    return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           **{k: v for k, v in self.special_tokens.items() if v is not None})

  @classmethod
  def from_gguf_metadata(cls, meta: dict[str, Any], source: str = "GGUF") -> "Tokenizer":
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
      raise UserError(f"{source}: tokenizer type {kind!r} is not supported; only byte-level BPE "
                      "('gpt2') vocabularies are rebuilt from GGUF")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
      raise UserError(f"{source}: unknown pre-tokenizer {pre!r}; known: {', '.join(PRE_TOKENIZERS)}")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    backend = BackendTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                          merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type", [])
    backend.add_special_tokens([
        AddedToken(tokens[i], special=True, normalized=False)
        for i, kind in enumerate(types) if kind in (_CONTROL, _USER_DEFINED)])

    def token(key: str) -> str | None:
      i = meta.get(f"tokenizer.ggml.{key}_token_id")
      return tokens[i] if i is not None else None

    special = {"bos_token": token("bos"), "eos_token": token("eos"), "pad_token": token("padding"),
               "unk_token": token("unknown")}
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return cls(backend, meta.get("tokenizer.chat_template"), special,
               [eos] if eos is not None else [], bool(meta.get("tokenizer.ggml.add_bos_token")))

  @classmethod
  def from_hf_folder(cls, folder: str | pathlib.Path) -> "Tokenizer":
    folder = pathlib.Path(folder)
    if not (folder / "tokenizer.json").is_file():
      raise UserError(f"{folder} has no tokenizer.json; tokenizers are read from the fast "
                      "(tokenizers library) format only")
    backend = BackendTokenizer.from_file(str(folder / "tokenizer.json"))
    config_file = folder / "tokenizer_config.json"
    tok_cfg = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else tok_cfg.get("chat_template")

    def token(key: str) -> str | None:
      value = tok_cfg.get(key)
      return value.get("content") if isinstance(value, dict) else value

    special = {k: token(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    eos_ids = [backend.token_to_id(special["eos_token"])] if special["eos_token"] else []
    return cls(backend, template, special, eos_ids, bool(tok_cfg.get("add_bos_token")))
