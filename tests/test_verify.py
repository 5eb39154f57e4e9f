"""Verify-and-accept: the Pallas kernel (both layouts, interpreted) equals the jnp reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from draftopd_jax.decoding.verify import verify, verify_reference
from draftopd_jax.sampling import SamplingConfig, noise
from pallas_kernels.verify_accept import verify_accept

LAYOUTS = ["tpu", "gpu"]


def run_both(logits, proposals, temperature, layout, tile=256, seed=7):
  ref = verify_reference(logits, proposals, jnp.int32(seed), SamplingConfig(temperature=temperature))
  got = verify_accept(logits, proposals, jnp.int32(seed), temperature=temperature, tile=tile,
                      layout=layout, interpret=True)
  return ref, got


def assert_same(ref, got):
  np.testing.assert_array_equal(got[0], ref.accepted_B)
  np.testing.assert_array_equal(got[1], ref.next_token_B)
  np.testing.assert_allclose(got[2], ref.proposal_logprob_BxK1, atol=1e-5, rtol=0)


def random_case(b, k, v, seed, agree=0.7):
  """Logits plus proposals that follow the argmax with probability `agree` per slot."""
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(b, k, v)) * 2.5, jnp.float32)
  target = np.asarray(jnp.argmax(logits, -1))[:, :-1]
  other = rng.integers(0, v, target.shape)
  proposals = np.where(rng.random(target.shape) < agree, target, other)
  return logits, jnp.asarray(proposals, jnp.int32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.6])
@pytest.mark.parametrize("b,k,v", [(1, 4, 1000), (3, 5, 777), (4, 8, 512), (2, 2, 300)])
def test_kernel_equals_reference_on_random_inputs(layout, temperature, b, k, v):
  for seed in range(3):
    assert_same(*run_both(*random_case(b, k, v, seed), temperature, layout, seed=seed))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_and_none_accepted(layout):
  logits, _ = random_case(2, 6, 1000, seed=1)
  argmax = jnp.argmax(logits, -1).astype(jnp.int32)
  ref, got = run_both(logits, argmax[:, :-1], 0.0, layout)
  assert_same(ref, got)
  assert got[0].tolist() == [5, 5]
  np.testing.assert_array_equal(got[1], argmax[:, 5])  # the bonus comes from the last row
  wrong = (argmax[:, :-1] + 1) % 1000
  ref, got = run_both(logits, wrong, 0.0, layout)
  assert_same(ref, got)
  assert got[0].tolist() == [0, 0]
  np.testing.assert_array_equal(got[1], argmax[:, 0])  # the correction at the first row


@pytest.mark.parametrize("layout", LAYOUTS)
def test_argmax_ties_pick_the_lowest_index_across_tiles(layout):
  logits = np.zeros((1, 3, 1000), np.float32)
  logits[0, 0, [900, 40, 300]] = 5.0  # tie across three tiles of 256
  logits[0, 1, [255, 256]] = 5.0  # tie on a tile boundary
  logits[0, 2, [999, 998]] = 5.0  # tie in the ragged last tile
  proposals = jnp.asarray([[40, 255]], jnp.int32)
  ref, got = run_both(jnp.asarray(logits), proposals, 0.0, layout)
  assert_same(ref, got)
  assert (int(got[0][0]), int(got[1][0])) == (2, 998)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_logits(layout):
  logits, proposals = random_case(2, 4, 640, seed=3)
  ref, got = run_both(logits.astype(jnp.bfloat16), proposals, 0.0, layout)
  assert_same(ref, got)


def test_dispatch_uses_the_reference_for_top_k_and_top_p():
  logits, proposals = random_case(2, 4, 300, seed=4)
  sampling = SamplingConfig(temperature=1.0, top_k=5)
  auto = verify(logits, proposals, jnp.int32(0), sampling, impl="auto")
  ref = verify_reference(logits, proposals, jnp.int32(0), sampling)
  np.testing.assert_array_equal(auto.next_token_B, ref.next_token_B)
  with pytest.raises(ValueError, match="top-k/top-p"):
    verify(logits, proposals, jnp.int32(0), sampling, impl="pallas")
  kernel = verify(logits, proposals, jnp.int32(0), SamplingConfig(), impl="pallas")
  np.testing.assert_array_equal(kernel.accepted_B, verify_reference(
      logits, proposals, jnp.int32(0), SamplingConfig()).accepted_B)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_kernel_lowers_for_tpu_and_gpu(temperature):
  """Lowering through Mosaic (TPU) and Triton (GPU) is checked here, without the hardware."""
  args = (jax.ShapeDtypeStruct((2, 8, 49152), jnp.bfloat16),
          jax.ShapeDtypeStruct((2, 7), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
  tpu = jax.jit(functools.partial(verify_accept, temperature=temperature, layout="tpu"))
  assert "tpu_custom_call" in export.export(tpu, platforms=["tpu"])(*args).mlir_module()
  gpu = jax.jit(functools.partial(verify_accept, temperature=temperature, layout="gpu"))
  triton_call = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
  exported = export.export(gpu, platforms=["cuda"], disabled_checks=[triton_call])(*args)
  assert "xla.gpu.triton" in exported.mlir_module()


def test_counter_noise_is_uniform_and_decorrelated():
  u = np.asarray(noise.uniform(jnp.int32(3), jnp.arange(64)[:, None], jnp.arange(4096)))
  assert 0 < u.min() and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
  hist = np.histogram(u, bins=16, range=(0, 1))[0] / u.size
  assert np.abs(hist - 1 / 16).max() < 0.004
  assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01
  other_seed = np.asarray(noise.uniform(jnp.int32(4), jnp.arange(64)[:, None], jnp.arange(4096)))
  assert abs(np.corrcoef(u.ravel(), other_seed.ravel())[0, 1]) < 0.01
