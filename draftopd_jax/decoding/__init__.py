"""Decoding: the speculative while_loop engine, verify-and-accept, batched generation."""

from draftopd_jax.decoding.engine import DecodeState, Trace, run
from draftopd_jax.decoding.generate import generate
from draftopd_jax.sampling import SamplingConfig, sample

__all__ = ["DecodeState", "SamplingConfig", "Trace", "generate", "run", "sample"]
