"""The target decoder as a pure function of a parameter pytree.

`Transformer` is a Flax NNX module; everything outside this file uses it through `forward(cfg,
params, ...)`, where `params` is a plain nested dict of arrays (`nnx.to_pure_dict` of the module
state). Layer weights are stored stacked on a leading axis (one tree for checkpoints and sharding
rules); a single forward scans over them, a decoding loop runs them unrolled. One forward serves
prefill, cached decoding and multi-token verification.
"""

import functools

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.layers import DecoderLayer, RMSNorm, random_params
from draftopd_jax.models.rope import inverse_frequencies

Params = dict


@flax.struct.dataclass
class KVCache:
  """Keys [B, Kv, H, S] and values [B, Kv, S, H], one array per layer (`layers.Attention` says
  why); slot `p` of a sequence holds the token at position `p`.

  Separate per-layer buffers (not one stacked [L, ...] array) let a decoding loop update each in
  place: slicing a layer out of a stacked cache inside the loop copies it on every step.
  """

  k_BxHkvxHxS: tuple[jax.Array, ...]
  v_BxHkvxSxH: tuple[jax.Array, ...]

  @classmethod
  def create(cls, cfg: ModelConfig, batch: int, max_len: int) -> "KVCache":
    zeros = lambda *shape: tuple(jnp.zeros(shape, cfg.jnp_dtype) for _ in range(cfg.num_layers))
    return cls(zeros(batch, cfg.num_kv_heads, cfg.head_dim, max_len),
               zeros(batch, cfg.num_kv_heads, max_len, cfg.head_dim))

  @property
  def max_len(self) -> int:
    return self.k_BxHkvxHxS[0].shape[3]


@flax.struct.dataclass
class ForwardOutput:
  logits_BxTxV: jax.Array
  cache: KVCache
  # Outputs of the requested decoder layers (id i = Hugging Face `hidden_states[i + 1]`).
  hidden_BxTxFxD: jax.Array


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
                           param_dtype=cfg.jnp_dtype, rngs=rngs)

    for name, ids in cfg.layer_stacks.items():
      setattr(self, name, _stacked_layers(cfg, len(ids), cfg.sparse_layers[ids[0]], rngs))
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.jnp_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False,
                                dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_dtype, rngs=rngs)
    self.cfg = cfg

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: KVCache,
               layer_ids: tuple[int, ...] = (), layer_params: tuple | None = None,
               logits_at_BxM: jax.Array | None = None) -> ForwardOutput:
    cfg = self.cfg
    x_BxTxD = self.embed(tokens_BxT)
    rope = inverse_frequencies(cfg)
    stacks = {name: nnx.split(getattr(self, name)) for name in cfg.layer_stacks}
    if layer_params is None:
      x_BxTxD, cache, hidden_BxTxFxD = self._scan_layers(stacks, x_BxTxD, positions_BxT, cache,
                                                         layer_ids, rope)
    else:
      x_BxTxD, cache, hidden_BxTxFxD = self._unrolled_layers(stacks, layer_params, x_BxTxD,
                                                             positions_BxT, cache, layer_ids, rope)
    if logits_at_BxM is not None:
      x_BxTxD = jnp.take_along_axis(x_BxTxD, logits_at_BxM[:, :, None], axis=1)
    return ForwardOutput(logits_BxTxV=self.logits(x_BxTxD), cache=cache,
                         hidden_BxTxFxD=hidden_BxTxFxD)

  def _scan_layers(self, stacks, x_BxTxD, positions_BxT, cache, layer_ids, rope):
    """One forward (training, prefill): a scan compiles the layer once, and on CPU it also ran a
    64-token forward of the 30-layer target faster than the unrolled layers (0.23 vs 0.35 s, and
    0.4 vs 3.4 s to compile). The requested layers' outputs go into a carried [F, ...] buffer,
    so the scan never stacks all L layers' activations. A MoE model with dense layers among its
    expert layers scans each run of consecutive layers of one kind."""
    kept = sorted(set(layer_ids))  # a layer may be requested twice
    slot_of_layer = [kept.index(i) if i in kept else len(kept) for i in range(self.cfg.num_layers)]
    hidden_FxBxTxD = jnp.zeros((len(kept) + 1,) + x_BxTxD.shape, x_BxTxD.dtype)  # last: discarded
    keys, values = [], []
    for name, first, ids in layer_runs(self.cfg):
      layer_graph, stacked_state = stacks[name]
      if len(ids) < len(self.cfg.layer_stacks[name]):
        stacked_state = jax.tree.map(lambda a: a[first:first + len(ids)], stacked_state)

      def layer(carry, per_layer, layer_graph=layer_graph):
        x_BxTxD, hidden_FxBxTxD = carry
        state, k_cache, v_cache, slot = per_layer
        x_BxTxD, k_cache, v_cache = nnx.merge(layer_graph, state)(x_BxTxD, positions_BxT,
                                                                  k_cache, v_cache, rope)
        hidden_FxBxTxD = jax.lax.dynamic_update_index_in_dim(hidden_FxBxTxD, x_BxTxD, slot, 0)
        return (x_BxTxD, hidden_FxBxTxD), (k_cache, v_cache)

      (x_BxTxD, hidden_FxBxTxD), (k_LxBxHkvxHxS, v_LxBxHkvxSxH) = jax.lax.scan(
          layer, (x_BxTxD, hidden_FxBxTxD),
          (stacked_state, jnp.stack([cache.k_BxHkvxHxS[i] for i in ids]),
           jnp.stack([cache.v_BxHkvxSxH[i] for i in ids]),
           jnp.asarray([slot_of_layer[i] for i in ids], jnp.int32)))
      keys += list(k_LxBxHkvxHxS)
      values += list(v_LxBxHkvxSxH)
    hidden_FxBxTxD = hidden_FxBxTxD[jnp.asarray([kept.index(i) for i in layer_ids], jnp.int32)]
    return x_BxTxD, KVCache(tuple(keys), tuple(values)), jnp.moveaxis(hidden_FxBxTxD, 0, 2)

  def _unrolled_layers(self, stacks, layer_params, x_BxTxD, positions_BxT, cache, layer_ids,
                       rope):
    """Inside a decoding loop: a scan would slice each layer's weights and cache out of stacked
    arrays on every call, a copy of all weights and the whole cache per generated token."""
    graph_of_layer = {i: stacks[name][0] for name, ids in self.cfg.layer_stacks.items()
                      for i in ids}
    keys, values, hidden = [], [], {}
    for i in range(self.cfg.num_layers):
      x_BxTxD, k_cache, v_cache = nnx.merge(graph_of_layer[i], layer_params[i])(
          x_BxTxD, positions_BxT, cache.k_BxHkvxHxS[i], cache.v_BxHkvxSxH[i], rope)
      keys.append(k_cache)
      values.append(v_cache)
      hidden[i] = x_BxTxD
    hidden_BxTxFxD = (jnp.stack([hidden[i] for i in layer_ids], axis=2) if layer_ids else
                      jnp.zeros(x_BxTxD.shape[:2] + (0, x_BxTxD.shape[2]), x_BxTxD.dtype))
    return x_BxTxD, KVCache(tuple(keys), tuple(values)), hidden_BxTxFxD

  def logits(self, x_BxTxD: jax.Array) -> jax.Array:
    """Final norm and LM head (fp32 logits); the DFlash drafter reuses them as they are."""
    return self.lm_head_logits(self.final_norm(x_BxTxD))

  def lm_head_logits(self, x_BxTxD: jax.Array, vocab_ids_Vs: jax.Array | None = None
                     ) -> jax.Array:
    """The LM head alone, on states that are already normalised; with `vocab_ids_Vs`, only those
    tokens' logits, in that order (a DFlash draft vocabulary)."""
    if vocab_ids_Vs is not None:
      rows_VsxD = (self.embed.embedding[vocab_ids_Vs] if self.cfg.tie_embeddings else
                   self.lm_head.kernel[:, vocab_ids_Vs].T)
      return jnp.einsum("...d,vd->...v", x_BxTxD, rows_VsxD).astype(jnp.float32)
    if self.cfg.tie_embeddings:
      return self.embed.attend(x_BxTxD).astype(jnp.float32)
    return self.lm_head(x_BxTxD).astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def _abstract_state(cfg: ModelConfig):
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def bind(cfg: ModelConfig, params: Params) -> Transformer:
  """The module view of `params` (inside jitted code), for its embedding and LM head."""
  return nnx.merge(_abstract_state(cfg)[0], params)


def init_params(cfg: ModelConfig, seed: int = 0) -> Params:
  """Random parameters (for unit tests and tiny models); real weights come from `io/`."""
  return random_params(Transformer, cfg, seed)


def param_shapes(cfg: ModelConfig) -> Params:
  """The parameter tree with `jax.ShapeDtypeStruct` leaves, without allocating anything."""
  return nnx.to_pure_dict(_abstract_state(cfg)[1])


def _stacked_layers(cfg: ModelConfig, count: int, sparse: bool, rngs: nnx.Rngs) -> DecoderLayer:

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def stacked_layers(rngs: nnx.Rngs) -> DecoderLayer:
    return DecoderLayer(cfg, rngs, sparse)

  return stacked_layers(rngs)


def layer_runs(cfg: ModelConfig) -> list[tuple[str, int, list[int]]]:
  """Consecutive model layers kept in one stack: (stack name, index of the first in the stack,
  model layer ids). One run for a dense model or a MoE model with expert layers only."""
  runs = []
  for name, ids in cfg.layer_stacks.items():
    for position, i in enumerate(ids):
      if runs and runs[-1][0] == name and runs[-1][2][-1] == i - 1:
        runs[-1][2].append(i)
      else:
        runs.append((name, position, [i]))
  return sorted(runs, key=lambda run: run[2][0])


def split_layers(cfg: ModelConfig, params: Params) -> tuple:
  """Per-layer parameter trees out of the stacked ones (`params["layers"]`, and
  `params["dense_layers"]` of a MoE model with dense layers), in model order."""
  per_layer = {i: jax.tree.map(lambda a, position=position: a[position], params[name])
               for name, ids in cfg.layer_stacks.items() for position, i in enumerate(ids)}
  return tuple(per_layer[i] for i in range(cfg.num_layers))


def forward(cfg: ModelConfig, params: Params, tokens_BxT: jax.Array, positions_BxT: jax.Array,
            cache: KVCache, layer_ids: tuple[int, ...] = (), layer_params: tuple | None = None,
            logits_at_BxM: jax.Array | None = None) -> ForwardOutput:
  """Runs the decoder on `tokens_BxT` at `positions_BxT`, writing their K/V into `cache`.

  Prefill, one-token decoding and K-token verification are the same call with T = prompt length,
  1 and K. Each query attends to the cache slots at or before its own position. Without
  `layer_params` the layers run in a scan. A loop that calls this many times passes
  `layer_params = split_layers(cfg, params)`, made once outside the loop: the layers then
  run unrolled, and the per-layer weights and caches are not sliced out again on every call. With
  `logits_at_BxM` (token indices) only those rows get logits (`logits_BxTxV` is then [B, M, V]):
  a prefill needs the last prompt token's alone, and the LM head is a fifth of a small model.
  """
  for i in layer_ids:
    if not 0 <= i < cfg.num_layers:
      raise ValueError(f"layer id {i} out of range for a {cfg.num_layers}-layer model")
  return bind(cfg, params)(tokens_BxT, positions_BxT, cache, tuple(layer_ids), layer_params,
                          logits_at_BxM)


def forward_sequences(cfg: ModelConfig, params: Params, tokens_BxT: jax.Array,
                      layer_ids: tuple[int, ...] = ()) -> ForwardOutput:
  """Whole sequences from position 0 in a fresh cache: the frozen target's pass inside a training
  step or a feature-cache build (logits, and the hidden states of `layer_ids`)."""
  b, t = tokens_BxT.shape
  return forward(cfg, params, tokens_BxT, jnp.broadcast_to(jnp.arange(t), (b, t)),
                 KVCache.create(cfg, b, t), layer_ids)
