"""Training FLOPs per step, by phase, so runs can be compared at matched compute.

Matmul FLOPs only (2 per multiply-add; attention score/value products included), the standard
accounting: a backward pass costs twice its forward.
"""

from draftopd_jax.models import ModelConfig, dflash


def _layer_matmul_params(c: ModelConfig, attention_input: int | None = None) -> int:
  d_in = attention_input or c.hidden_size
  attention = d_in * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim * c.hidden_size
  return attention + 3 * c.hidden_size * c.intermediate_size


def target_forward(c: ModelConfig, tokens: int, context: int) -> float:
  """`tokens` query positions, each attending over `context` keys."""
  per_token = c.num_layers * (_layer_matmul_params(c) + 2 * c.num_heads * c.head_dim * context)
  return 2.0 * tokens * (per_token + c.hidden_size * c.vocab_size)


def dflash_train(cfg: dflash.DFlashConfig, target: ModelConfig, batch: int, seq_len: int,
                 num_anchors: int) -> dict[str, float]:
  """Target forward over the batch, drafter forward + backward over all blocks."""
  c, k = cfg.layer, cfg.block_size
  block_tokens = batch * num_anchors * k
  context_proj = (len(cfg.target_layer_ids) * c.hidden_size * c.hidden_size
                  + cfg.num_layers * 2 * c.hidden_size * c.num_kv_heads * c.head_dim)
  drafter = 2.0 * (batch * seq_len * context_proj + block_tokens * (
      cfg.num_layers * (_layer_matmul_params(c) + 2 * c.num_heads * c.head_dim * (seq_len + k))
      + c.hidden_size * target.vocab_size))
  return {"target_forward": target_forward(target, batch * seq_len, seq_len),
          "drafter_forward": drafter, "drafter_backward": 2 * drafter}


def eagle3_train(cfg, target: ModelConfig, batch: int, seq_len: int, ttt_steps: int
                 ) -> dict[str, float]:
  """Target forward over the batch; `ttt_steps` drafter passes over every position, each with
  the fc fusion (step 0 only), one layer and the draft-vocabulary head."""
  c = cfg.layer
  tokens = batch * seq_len
  per_step = (_layer_matmul_params(c, attention_input=2 * c.hidden_size)
              + 2 * c.num_heads * c.head_dim * seq_len + c.hidden_size * cfg.draft_vocab_size)
  fuse = len(cfg.target_layer_ids) * c.hidden_size * c.hidden_size
  drafter = 2.0 * tokens * (fuse + ttt_steps * per_step)
  return {"target_forward": target_forward(target, tokens, seq_len),
          "drafter_forward": drafter, "drafter_backward": 2 * drafter}
