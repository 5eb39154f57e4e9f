"""Target features of SFT examples on disk: the frozen target runs once per corpus, not per epoch.

The design keeps the target online (its hidden states are recomputed inside every train step),
and that stays the default: a pod target's taps (5 x 4096 x 2 bytes = 40 KB per token) do not fit
on a disk. On a CPU with a small target the target's forward is most of a DFlash SFT step, and a
corpus is read for many epochs, so `data.feature_cache` (DFlash, CE loss) stores the outputs of
the tapped target layers for every token of every example once, in bfloat16, and every run with
the same examples, target, taps and sequence length reuses them.

The examples are cached in chunks of `CHUNK` (a corpus shard's 512), one folder each, named by a
hash of everything that changes its contents, so a growing corpus only adds folders and runs on a
prefix of it share them:
  features.npy   uint16 [tokens, F, D]: the bfloat16 bits, example after example
  offsets.npy    int64 [N + 1]: example i is features[offsets[i]:offsets[i + 1]]
  progress.json  batches done and seconds spent; a stopped build resumes after the last batch
  manifest.json  written last, when complete: key, shapes, size, build seconds and FLOPs
"""

import functools
import hashlib
import json
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm import tqdm

from draftopd_jax.data.corpus import atomic_write
from draftopd_jax.models import ModelConfig, forward_sequences
from draftopd_jax.training import flops

FORMAT = 1
WIDTH_BUCKET = 64  # batch widths are padded up to a multiple of this: few compiled shapes
CHUNK = 512  # examples per cache folder


def cache_key(examples: Sequence[tuple[Sequence[int], Sequence[int]]], target_fingerprint: str,
              layer_ids: tuple[int, ...], seq_len: int) -> str:
  digest = hashlib.sha256(json.dumps({"format": FORMAT, "target": target_fingerprint,
                                      "layer_ids": list(layer_ids), "seq_len": seq_len}).encode())
  for prompt, response in examples:
    digest.update(np.asarray(prompt, np.int32).tobytes() + b"|")
    digest.update(np.asarray(response, np.int32).tobytes() + b"#")
  return digest.hexdigest()[:20]


@functools.partial(jax.jit, static_argnames=("target_cfg", "layer_ids"))
def _features(target_cfg: ModelConfig, target_params: dict, tokens_BxT: jax.Array,
              layer_ids: tuple[int, ...]) -> jax.Array:
  out = forward_sequences(target_cfg, target_params, tokens_BxT, layer_ids)
  return out.hidden_BxTxFxD.astype(jnp.bfloat16)  # the unused logits are dropped by XLA


class FeatureCache:
  """Complete cache folders (chunks of `CHUNK` examples, in order), memory-mapped for reading."""

  def __init__(self, roots: Sequence[pathlib.Path]):
    self.roots = list(roots)
    manifests = [json.loads((root / "manifest.json").read_text()) for root in self.roots]
    self._features = [np.load(root / "features.npy", mmap_mode="r") for root in self.roots]
    self._offsets = [np.load(root / "offsets.npy") for root in self.roots]
    self.manifest = {key: sum(m[key] for m in manifests) for key in
                     ("examples", "tokens", "bytes", "build_seconds", "build_flops")}

  def batch(self, indices: Sequence[int], seq_len: int) -> np.ndarray:
    """bfloat16 [B, seq_len, F, D] features of examples `indices`, zero past their ends (the
    positions `training.data.to_batch` pads, which no block ever sees as context)."""
    out = np.zeros((len(indices), seq_len) + self._features[0].shape[1:], np.uint16)
    for row, i in enumerate(indices):
      chunk, j = divmod(i, CHUNK)
      offsets = self._offsets[chunk]
      rows = self._features[chunk][offsets[j]:offsets[j + 1]]
      out[row, :len(rows)] = rows
    return out.view(ml_dtypes.bfloat16)


def build(examples: Sequence[tuple[Sequence[int], Sequence[int]]], target_cfg: ModelConfig,
          target_params: dict, target_fingerprint: str, layer_ids: tuple[int, ...],
          seq_len: int, cache_dir: str | pathlib.Path, batch_size: int = 16,
          show_progress: bool = True) -> FeatureCache:
  """The cache of `examples` (prompt + response, truncated to `seq_len`): its chunks made where
  missing and resumed where a build was stopped."""
  chunks = [examples[i:i + CHUNK] for i in range(0, len(examples), CHUNK)]
  roots = [pathlib.Path(cache_dir) / cache_key(chunk, target_fingerprint, layer_ids, seq_len)
           for chunk in chunks]
  todo = [(root, chunk) for root, chunk in zip(roots, chunks)
          if not (root / "manifest.json").is_file()]
  total = sum(min(len(p) + len(r), seq_len) for _, chunk in todo for p, r in chunk)
  with tqdm(total=total, desc="target features", unit="tok", unit_scale=True,
            disable=not show_progress or not todo) as bar:
    for root, chunk in todo:
      _build_chunk(root, chunk, target_cfg, target_params, layer_ids, seq_len, batch_size, bar)
  return FeatureCache(roots)


def _build_chunk(root: pathlib.Path, examples, target_cfg: ModelConfig, target_params: dict,
                 layer_ids: tuple[int, ...], seq_len: int, batch_size: int, bar: tqdm) -> None:
  """One cache folder. Examples go through the target in order of length."""
  root.mkdir(parents=True, exist_ok=True)
  sequences = [(list(p) + list(r))[:seq_len] for p, r in examples]
  lengths = np.array([len(s) for s in sequences], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  shape = (int(offsets[-1]), len(layer_ids), target_cfg.hidden_size)
  progress_file = root / "progress.json"
  progress = (json.loads(progress_file.read_text()) if progress_file.is_file() else
              {"batches": 0, "seconds": 0.0})
  done = progress["batches"]
  if done == 0:
    np.save(root / "offsets.npy", offsets)
    features = np.lib.format.open_memmap(root / "features.npy", "w+", np.uint16, shape)
  else:
    features = np.load(root / "features.npy", mmap_mode="r+")
  order = np.argsort(lengths, kind="stable")
  batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  seconds, started = progress["seconds"], time.perf_counter()
  bar.update(int(lengths[np.concatenate(batches[:done])].sum()) if done else 0)
  for b in range(done, len(batches)):
    rows = batches[b]
    width = -(-int(lengths[rows].max()) // WIDTH_BUCKET) * WIDTH_BUCKET
    tokens = np.zeros((len(rows), width), np.int32)
    for r, i in enumerate(rows):
      tokens[r, :lengths[i]] = sequences[i]
    hidden = np.asarray(_features(target_cfg, target_params, jnp.asarray(tokens), layer_ids))
    for r, i in enumerate(rows):
      features[offsets[i]:offsets[i + 1]] = hidden[r, :lengths[i]].view(np.uint16)
    features.flush()  # the data first, then the count that vouches for it
    progress = {"batches": b + 1, "seconds": seconds + time.perf_counter() - started}
    atomic_write(progress_file, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(progress)))
    bar.update(int(lengths[rows].sum()))
  del features
  manifest = {"format": FORMAT, "key": root.name, "examples": len(examples), "tokens": shape[0],
              "layer_ids": list(layer_ids), "hidden_size": shape[2], "seq_len": seq_len,
              "bytes": int(np.prod(shape)) * 2, "build_seconds": progress["seconds"],
              "build_flops": sum(flops.target_forward(target_cfg, n, n, lm_head=False)
                                 for n in lengths.tolist())}
  atomic_write(root / "manifest.json",
               lambda tmp: pathlib.Path(tmp).write_text(json.dumps(manifest, indent=1)))
