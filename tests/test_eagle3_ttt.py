"""EAGLE-3 training-time test: the unrolled steps see exactly what inference drafting sees."""

import jax
import jax.numpy as jnp
import numpy as np

from draftopd_jax.models import KVCache, ModelConfig, eagle3, forward, init_params

CFG = ModelConfig(family="llama", vocab_size=61, hidden_size=32, num_layers=6, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=48)
PARAMS = init_params(CFG, seed=1)
E_CFG = eagle3.Eagle3Config.for_target(CFG, block_size=5, draft_vocab_size=40)
E_PARAMS = jax.tree.map(lambda x: x * 2, eagle3.init_params(E_CFG, seed=2))


def test_ttt_steps_equal_teacher_forced_inference_drafting():
  t, steps = 14, 4
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, t)))
  features = forward(CFG, PARAMS, tokens, jnp.broadcast_to(jnp.arange(t), (2, t)),
                     KVCache.create(CFG, 2, t), E_CFG.target_layer_ids).hidden_BxTxFxD
  ttt = eagle3.ttt_logits(E_CFG, E_PARAMS, CFG, PARAMS, tokens, features, steps)
  assert ttt.shape == (steps, 2, t, E_CFG.draft_vocab_size)

  for anchor in (3, 7):
    # Inference: slots 0..anchor-1 from target features and the next tokens, then a chain of
    # draft steps fed with the true tokens (teacher forcing) and the drafter's own hidden state.
    fused = eagle3.bind(E_CFG, E_PARAMS).fuse(features[:, :anchor])
    hidden, logits, cache = eagle3.step(
        E_CFG, E_PARAMS, CFG, PARAMS, tokens[:, 1:anchor + 1], fused,
        jnp.broadcast_to(jnp.arange(anchor), (2, anchor)), eagle3.Eagle3Cache.create(E_CFG, 2, t + steps))
    np.testing.assert_allclose(ttt[0, :, anchor - 1], logits[:, anchor - 1], atol=1e-4)
    h = hidden[:, anchor - 1:anchor]
    for s in range(1, steps):
      position = anchor - 1 + s
      h, logits, cache = eagle3.step(E_CFG, E_PARAMS, CFG, PARAMS, tokens[:, position + 1:position + 2],
                                     h, jnp.full((2, 1), position), cache)
      np.testing.assert_allclose(ttt[s, :, anchor - 1], logits[:, 0], atol=1e-4)
