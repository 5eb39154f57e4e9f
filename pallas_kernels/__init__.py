"""Fused verify-and-accept Pallas kernels for TPU and GPU, each beside its `jnp` reference
(`verify_accept.py`). They import only `draftopd_jax.sampling` (the shared noise)."""
