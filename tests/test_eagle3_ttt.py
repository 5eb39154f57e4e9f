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
  ttt = jax.jit(eagle3.ttt_logits, static_argnums=(0, 2, 6))(E_CFG, E_PARAMS, CFG, PARAMS, tokens,
                                                              features, steps)
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


def test_ttt_alignment_by_hand():
  """T = 6: at step 2, index 0 reads token 3 at position 2, is taught by the target's logits at
  index 3 (which predict token 4) and predicts token 4; from index 2 on, labels run off the end."""
  where = eagle3.ttt_positions(6, 2)
  assert where["input_token"].tolist() == [3, 4, 5, 5, 5, 5]
  assert where["position"].tolist() == [2, 3, 4, 5, 6, 7]
  assert where["teacher"].tolist() == [3, 4, 5, 5, 5, 5]
  assert where["label"].tolist() == [4, 5, 6, 7, 8, 9]
  step0 = eagle3.ttt_positions(6, 0)
  assert step0["input_token"].tolist()[:3] == [1, 2, 3] and step0["label"].tolist()[:3] == [2, 3, 4]


def test_eagle3_ttt_loss_trains():
  import optax

  from draftopd_jax.sft import eagle3_loss

  tokens = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 12)))
  mask = jnp.arange(12)[None].repeat(2, 0) >= 4
  d2t = jnp.asarray(eagle3.build_draft_vocab(np.bincount(np.asarray(tokens).ravel(), minlength=61), 40))
  params = {"model": E_PARAMS, "d2t": d2t}

  @jax.jit
  def loss(model):
    return eagle3_loss.loss_fn({"model": model, "d2t": d2t}, E_CFG, CFG, PARAMS, tokens, mask,
                              steps=3)[0]

  grad = jax.jit(jax.grad(loss))

  opt = optax.adam(1e-2)
  model, state = params["model"], opt.init(params["model"])
  first = float(loss(model))
  for _ in range(30):
    grads = grad(model)
    updates, state = opt.update(grads, state)
    model = optax.apply_updates(model, updates)
  assert float(loss(model)) < 0.7 * first
