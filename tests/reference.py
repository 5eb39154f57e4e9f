"""Reference computations that tests compare the fast paths against."""

import functools

import jax
import jax.numpy as jnp

from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.models import ForwardOutput, KVCache, ModelConfig, forward


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward_1xW(cfg: ModelConfig, params: dict, tokens_1xW: jax.Array,
                 layer_ids: tuple[int, ...]) -> ForwardOutput:
  width = tokens_1xW.shape[1]
  return forward(cfg, params, tokens_1xW, jnp.arange(width)[None], KVCache.create(cfg, 1, width),
                 layer_ids)


def whole_forward(cfg: ModelConfig, params: dict, ids: list[int], width: int,
                  layer_ids: tuple[int, ...] = ()) -> ForwardOutput:
  """The target's forward over the whole sequence `ids` with a fresh cache (no state to get
  wrong), cut to its length. It is padded at the end to `width`, so that every length shares one
  compiled program; causal attention keeps the padding out of the real positions."""
  tokens_1xW, _ = pad_batch([list(ids)], pad_id=0, width=width)
  out = _forward_1xW(cfg, params, jnp.asarray(tokens_1xW), tuple(layer_ids))
  return jax.tree.map(lambda x: x[:, :len(ids)], out.replace(cache=None))
