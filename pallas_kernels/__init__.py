"""Fused verify-and-accept Pallas kernels for TPU and GPU, each beside its `jnp` reference.

Empty until the speculative-decoding engine lands; see DESIGN §8 for the kernel's contract.
"""
