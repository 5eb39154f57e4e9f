"""Decoding loops: autoregressive generation (and, later, speculative decoding)."""

from draftopd_jax.decoding.generate import DecodeState, generate
from draftopd_jax.decoding.sampling import SamplingConfig, sample

__all__ = ["DecodeState", "SamplingConfig", "generate", "sample"]
