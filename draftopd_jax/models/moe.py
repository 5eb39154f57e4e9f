"""The mixture-of-experts MLP of Qwen3-MoE: top-k routing over SwiGLU experts, no token dropping.

Shape letters beyond the legend in `models/__init__.py`: X experts, A experts routed per token
(`num_experts_per_tok`), J an expert's hidden width (`moe_intermediate_size`); BT is the batch's
tokens flattened.

Two dispatches compute the same function (`ModelConfig.moe_dispatch`):
* "dense": every expert runs on every token and the gates (zero for unchosen experts) mix them.
  X / A times the FLOPs of routing, but plain einsums whose expert axis shards over an `expert`
  mesh axis as it is; right for few experts, for small decode batches where reading the weights
  dominates, and as the reference.
* "ragged": the BT x A (token, expert) pairs sorted by expert, each expert's rows multiplied by
  its weights alone (`jax.lax.ragged_dot`), the results scattered back; the routed FLOPs only.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from draftopd_jax.models.config import ModelConfig


class MoE(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    x, d, j = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
    init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.router = nnx.Linear(d, x, use_bias=False, dtype=cfg.jnp_dtype,
                             param_dtype=cfg.jnp_dtype, rngs=rngs)
    self.gate_XxDxJ = nnx.Param(init(rngs.params(), (x, d, j), cfg.jnp_dtype))
    self.up_XxDxJ = nnx.Param(init(rngs.params(), (x, d, j), cfg.jnp_dtype))
    self.down_XxJxD = nnx.Param(init(rngs.params(), (x, j, d), cfg.jnp_dtype))
    self.cfg = cfg

  def route(self, x_BTxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each token's experts and their gates: the top A of the softmax over all X experts
    (float32), renormalised to sum to 1 with `norm_topk_prob`, cast to the model dtype."""
    probs_BTxX = jax.nn.softmax(self.router(x_BTxD).astype(jnp.float32), axis=-1)
    gates_BTxA, experts_BTxA = jax.lax.top_k(probs_BTxX, self.cfg.num_experts_per_tok)
    if self.cfg.norm_topk_prob:
      gates_BTxA = gates_BTxA / jnp.sum(gates_BTxA, axis=-1, keepdims=True)
    return gates_BTxA.astype(x_BTxD.dtype), experts_BTxA

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x_BTxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
    gates_BTxA, experts_BTxA = self.route(x_BTxD)
    dispatch = _dense if self.cfg.moe_dispatch == "dense" else _ragged
    out_BTxD = dispatch(x_BTxD, gates_BTxA, experts_BTxA, self.gate_XxDxJ[...],
                        self.up_XxDxJ[...], self.down_XxJxD[...])
    return out_BTxD.reshape(x_BxTxD.shape)


def _dense(x_BTxD, gates_BTxA, experts_BTxA, gate_XxDxJ, up_XxDxJ, down_XxJxD):
  num_experts = gate_XxDxJ.shape[0]
  mix_BTxX = jnp.sum(jax.nn.one_hot(experts_BTxA, num_experts, dtype=x_BTxD.dtype)
                     * gates_BTxA[..., None], axis=1)
  h_XxBTxJ = (jax.nn.silu(jnp.einsum("nd,xdj->xnj", x_BTxD, gate_XxDxJ))
              * jnp.einsum("nd,xdj->xnj", x_BTxD, up_XxDxJ))
  # Mixing before the down projection keeps the [X, BT, D] expert outputs out of memory.
  return jnp.einsum("xnj,xjd->nd", h_XxBTxJ * mix_BTxX.T[:, :, None], down_XxJxD)


def _ragged(x_BTxD, gates_BTxA, experts_BTxA, gate_XxDxJ, up_XxDxJ, down_XxJxD):
  num_experts, routed = gate_XxDxJ.shape[0], experts_BTxA.shape[1]
  order_BTA = jnp.argsort(experts_BTxA.reshape(-1))  # (token, expert) pairs by expert
  token_BTA = order_BTA // routed
  group_sizes_X = jnp.bincount(experts_BTxA.reshape(-1), length=num_experts).astype(jnp.int32)
  x_BTAxD = x_BTxD[token_BTA]
  h_BTAxJ = (jax.nn.silu(jax.lax.ragged_dot(x_BTAxD, gate_XxDxJ, group_sizes_X))
           * jax.lax.ragged_dot(x_BTAxD, up_XxDxJ, group_sizes_X))
  h_BTAxJ = h_BTAxJ * gates_BTxA.reshape(-1)[order_BTA][:, None]
  out_BTAxD = jax.lax.ragged_dot(h_BTAxJ, down_XxJxD, group_sizes_X)
  return jnp.zeros_like(x_BTxD).at[token_BTA].add(out_BTAxD)
