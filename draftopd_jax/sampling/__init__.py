"""Token choice from logits (greedy, temperature, top-k, top-p) and the counter-based noise that
the verify kernel and its `jnp` reference share. Below both `decoding/` and `pallas_kernels/`."""

from draftopd_jax.sampling.choice import SamplingConfig, filtered_logits, sample

__all__ = ["SamplingConfig", "filtered_logits", "sample"]
