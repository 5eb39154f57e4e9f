"""Decoding: the speculative while_loop engine, drafters, verify-and-accept, sampling."""

from draftopd_jax.decoding.engine import DecodeState, Trace, run
from draftopd_jax.decoding.generate import generate
from draftopd_jax.decoding.sampling import SamplingConfig, sample

__all__ = ["DecodeState", "SamplingConfig", "Trace", "generate", "run", "sample"]
