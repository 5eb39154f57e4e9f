"""Training FLOPs per step, by phase, so runs can be compared at matched compute.

Matmul FLOPs only (2 per multiply-add; attention score/value products included), the standard
accounting: a backward pass costs twice its forward.
"""

from draftopd_jax.models import ModelConfig, dflash


def _layer_matmul_params(c: ModelConfig, attention_input: int | None = None) -> int:
  d_in = attention_input or c.hidden_size
  attention = d_in * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim * c.hidden_size
  return attention + 3 * c.hidden_size * c.intermediate_size


def target_forward(c: ModelConfig, tokens: int, context: int, lm_head: bool = True) -> float:
  """`tokens` query positions, each attending over `context` keys."""
  per_token = c.num_layers * (_layer_matmul_params(c) + 2 * c.num_heads * c.head_dim * context)
  return 2.0 * tokens * (per_token + lm_head * c.hidden_size * c.vocab_size)


def dflash_forward(cfg: dflash.DFlashConfig, context_tokens: int, block_tokens: int,
                   context: int) -> float:
  """Context projections of `context_tokens` target features, then `block_tokens` block slots
  through the drafter layers (attending over `context` keys), and the LM head over the draft
  vocabulary at the proposal slots (K-1 of every K)."""
  c, k = cfg.layer, cfg.block_size
  context_proj = (len(cfg.target_layer_ids) * c.hidden_size * c.hidden_size
                  + cfg.num_layers * 2 * c.hidden_size * c.num_kv_heads * c.head_dim)
  return 2.0 * (context_tokens * context_proj + block_tokens * cfg.num_layers * (
      _layer_matmul_params(c) + 2 * c.num_heads * c.head_dim * (context + k))
      + block_tokens * (k - 1) // k * c.hidden_size * cfg.vocab_size)


def dflash_train(cfg: dflash.DFlashConfig, target: ModelConfig, batch: int, seq_len: int,
                 num_anchors: int, cached_features: bool = False, distill: bool = False
                 ) -> dict[str, float]:
  """Target forward over the batch (with a feature cache, whose one-off cost its manifest
  counts, only the teacher's LM head at the labelled positions when distilling), drafter
  forward + backward over all blocks."""
  drafter = dflash_forward(cfg, batch * seq_len, batch * num_anchors * cfg.block_size,
                           seq_len)
  labelled = batch * num_anchors * (cfg.block_size - 1)
  if not cached_features:
    target_flops = target_forward(target, batch * seq_len, seq_len)
  else:
    target_flops = 2.0 * labelled * target.hidden_size * cfg.vocab_size if distill else 0.0
  return {"target_forward": target_flops, "drafter_forward": drafter,
          "drafter_backward": 2 * drafter}


def _eagle3_token_step(cfg, context: int) -> int:
  c = cfg.layer
  return (_layer_matmul_params(c, attention_input=2 * c.hidden_size)
          + 2 * c.num_heads * c.head_dim * context + c.hidden_size * cfg.draft_vocab_size)


def opd(cfg, target: ModelConfig, batch: int, prompt_len: int, seq_len: int,
        rollout_steps: int, num_blocks: int, target_pass: bool = False) -> dict[str, float]:
  """One Draft-OPD update over `batch` sequences: the rollout (prefill, then `rollout_steps`
  verify steps of the whole batch, each with a drafter proposal), with `target_pass` a second
  target forward over the committed sequences (random anchors), and the replay (forward +
  backward): `num_blocks` DFlash blocks per sequence, or the EAGLE-3 unroll of K-1 steps over
  every position."""
  k = cfg.block_size
  if isinstance(cfg, dflash.DFlashConfig):
    propose = dflash_forward(cfg, batch * k, batch * k, seq_len)
    replay = dflash_forward(cfg, batch * seq_len, batch * num_blocks * k, seq_len)
  else:  # EAGLE-3: K positions observed, K-2 chained single-token steps; TTT replay
    fuse = len(cfg.target_layer_ids) * cfg.layer.hidden_size ** 2
    propose = 2.0 * batch * (k * fuse + (2 * k - 2) * _eagle3_token_step(cfg, seq_len))
    replay = 2.0 * batch * seq_len * (fuse + (k - 1) * _eagle3_token_step(cfg, seq_len))
  rollout = (target_forward(target, batch * prompt_len, prompt_len)
             + rollout_steps * (target_forward(target, batch * k, seq_len) + propose))
  second_pass = target_forward(target, batch * seq_len, seq_len) if target_pass else 0.0
  return {"rollout": rollout, "target_pass": second_pass, "drafter_forward": replay,
          "drafter_backward": 2 * replay}


def eagle3_train(cfg, target: ModelConfig, batch: int, seq_len: int, ttt_steps: int
                 ) -> dict[str, float]:
  """Target forward over the batch; `ttt_steps` drafter passes over every position, each with
  the fc fusion (step 0 only), one layer and the draft-vocabulary head."""
  tokens = batch * seq_len
  fuse = len(cfg.target_layer_ids) * cfg.layer.hidden_size ** 2
  drafter = 2.0 * tokens * (fuse + ttt_steps * _eagle3_token_step(cfg, seq_len))
  return {"target_forward": target_forward(target, tokens, seq_len),
          "drafter_forward": drafter, "drafter_backward": 2 * drafter}
