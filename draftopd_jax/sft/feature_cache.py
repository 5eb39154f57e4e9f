"""Target features of SFT examples on disk: the frozen target runs once per corpus, not per epoch.

The design keeps the target online (its hidden states are recomputed inside every train step),
and that stays the default: a pod target's taps (5 x 4096 x 2 bytes = 40 KB per token) do not fit
on a disk. On a CPU with a small target the target's forward is most of a DFlash SFT step, and a
corpus is read for many epochs, so `data.feature_cache` (DFlash, CE loss) stores the outputs of
the tapped target layers for every token of every example once, in bfloat16, and every run with
the same examples, target, taps and sequence length reuses them.

A cache folder, named by a hash of everything that changes its contents:
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
  """A complete cache folder, memory-mapped for reading."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.manifest = json.loads((root / "manifest.json").read_text())
    self._features = np.load(root / "features.npy", mmap_mode="r")
    self._offsets = np.load(root / "offsets.npy")

  def batch(self, indices: Sequence[int], seq_len: int) -> np.ndarray:
    """bfloat16 [B, seq_len, F, D] features of examples `indices`, zero past their ends (the
    positions `training.data.to_batch` pads, which no block ever sees as context)."""
    out = np.zeros((len(indices), seq_len) + self._features.shape[1:], np.uint16)
    for row, i in enumerate(indices):
      rows = self._features[self._offsets[i]:self._offsets[i + 1]]
      out[row, :len(rows)] = rows
    return out.view(ml_dtypes.bfloat16)


def build(examples: Sequence[tuple[Sequence[int], Sequence[int]]], target_cfg: ModelConfig,
          target_params: dict, target_fingerprint: str, layer_ids: tuple[int, ...],
          seq_len: int, cache_dir: str | pathlib.Path, batch_size: int = 16,
          show_progress: bool = True) -> FeatureCache:
  """The cache of `examples` (prompt + response, truncated to `seq_len`), made if missing and
  resumed if a build was stopped. Examples go through the target in order of length."""
  key = cache_key(examples, target_fingerprint, layer_ids, seq_len)
  root = pathlib.Path(cache_dir) / key
  if (root / "manifest.json").is_file():
    return FeatureCache(root)
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
  with tqdm(total=int(offsets[-1]), initial=int(lengths[np.concatenate(batches[:done])].sum())
            if done else 0, desc="target features", unit="tok", unit_scale=True,
            disable=not show_progress) as bar:
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
  manifest = {"format": FORMAT, "key": key, "examples": len(examples), "tokens": shape[0],
              "layer_ids": list(layer_ids), "hidden_size": shape[2], "seq_len": seq_len,
              "bytes": int(np.prod(shape)) * 2, "build_seconds": progress["seconds"],
              "build_flops": sum(flops.target_forward(target_cfg, n, n, lm_head=False)
                                 for n in lengths.tolist())}
  atomic_write(root / "manifest.json",
               lambda tmp: pathlib.Path(tmp).write_text(json.dumps(manifest, indent=1)))
  return FeatureCache(root)
