"""Where a DFlash drafter drafts against where SFT trains it, on the same committed text.

SFT draws its anchors uniformly among response positions; speculative decoding anchors a block
at the token that follows a rejection. Greedy decoding commits the target's own text, so both
read the same sequences and the same target features: only the anchor positions differ. Each
committed sequence is teacher-forced once, with a block at every position, and read at both
anchor sets. The drafter's accuracy at slot k is the share of blocks whose proposal k equals the
committed token at anchor + k (not conditioned on slots before it). A lower first-slot accuracy
at the engine's anchors than at uniform ones is the offline/on-policy gap that Draft-OPD's replay
from recorded anchors trains on (docs/results.md).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from draftopd_jax.decoding.engine import DecodeState
from draftopd_jax.models import ModelConfig, dflash, forward_sequences


@functools.partial(jax.jit, static_argnums=(0, 2))
def teacher_forced_proposals(cfg: dflash.DFlashConfig, params: dict, target_cfg: ModelConfig,
                             target_params: dict, tokens_BxT: jax.Array) -> jax.Array:
  """Greedy proposals [B, T, K-1] (target token ids) of a block anchored at every position of
  `tokens_BxT`, each seeing the target's features strictly before its anchor, as in SFT."""
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t), (b, t))
  features = forward_sequences(target_cfg, target_params, tokens_BxT, cfg.target_layer_ids)
  cache = dflash.write_context(cfg, params, dflash.ContextCache.create(cfg, b, t),
                               features.hidden_BxTxFxD.astype(cfg.layer.jnp_dtype), positions_BxT)
  logits_BxTxK1xVd = dflash.proposal_logits(cfg, params, target_cfg, target_params, tokens_BxT,
                                            positions_BxT, cache)
  proposals_BxTxK1 = jnp.argmax(logits_BxTxK1xVd, -1)
  d2t_Vd = cfg.draft_ids()
  return proposals_BxTxK1 if d2t_Vd is None else d2t_Vd[proposals_BxTxK1]


def anchor_gap(cfg: dflash.DFlashConfig, params: dict, target_cfg: ModelConfig,
               target_params: dict, state: DecodeState) -> dict:
  """Slot accuracies at uniform (SFT) and on-policy (the engine's) anchors of a finished greedy
  decode, the engine's own acceptance at its anchors (which must equal the teacher-forced slot 1),
  and the share of response positions the engine anchored at."""
  tokens_BxS = np.asarray(state.tokens_BxS)
  prompt_lens, lengths = np.asarray(state.prompt_lens_B), np.asarray(state.lengths_B)
  trace = jax.device_get(state.trace)
  k1 = cfg.block_size - 1
  counts = {name: np.zeros((2, k1)) for name in ("uniform", "on_policy")}  # hits, labelled
  engine_accepts = 0
  for row in range(len(lengths)):
    proposals_TxK1 = np.asarray(teacher_forced_proposals(
        cfg, params, target_cfg, target_params, jnp.asarray(tokens_BxS[row:row + 1])))[0]
    length = int(lengths[row])

    def hits_and_labelled(anchors_N: np.ndarray) -> np.ndarray:
      """Per slot, the blocks whose proposal matches the committed token, and the blocks whose
      slot has a committed token to match."""
      label_pos_NxK1 = anchors_N[:, None] + np.arange(1, k1 + 1)
      labelled_NxK1 = label_pos_NxK1 < length
      labels_NxK1 = tokens_BxS[row, np.minimum(label_pos_NxK1, length - 1)]
      return np.stack([((proposals_TxK1[anchors_N] == labels_NxK1) & labelled_NxK1).sum(0),
                       labelled_NxK1.sum(0)])

    # SFT's candidates: every position whose next token is a response token.
    uniform_N = np.arange(prompt_lens[row] - 1, length - 1)
    steps = int(trace.num_steps_B[row])
    on_policy_N = trace.anchor_pos_BxN[row, :steps]
    labelled = on_policy_N < length - 1  # a last block cut by the length limit labels nothing
    counts["uniform"] += hits_and_labelled(uniform_N)
    counts["on_policy"] += hits_and_labelled(on_policy_N[labelled])
    engine_accepts += int((trace.accepted_BxN[row, :steps][labelled] >= 1).sum())
  blocks = {name: int(c[1, 0]) for name, c in counts.items()}
  return {
      **{f"{name}_accuracy_by_slot": (c[0] / np.maximum(c[1], 1)).tolist()
         for name, c in counts.items()},
      "engine_first_slot_acceptance": engine_accepts / max(blocks["on_policy"], 1),
      "anchor_share": blocks["on_policy"] / max(blocks["uniform"], 1),
      "uniform_blocks": blocks["uniform"],
      "on_policy_blocks": blocks["on_policy"],
  }
