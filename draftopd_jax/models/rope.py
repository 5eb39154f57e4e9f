"""Rotary position embeddings: inverse frequencies (with the scalings real checkpoints use) and
their application in the Hugging Face "rotate half" layout."""

import math

import jax.numpy as jnp
import numpy as np

from draftopd_jax.models.config import ModelConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def inverse_frequencies(cfg: ModelConfig) -> tuple[np.ndarray, float]:
  """Returns (inv_freq of shape [head_dim // 2], attention scale applied to cos/sin)."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  scaling = cfg.rope_scaling_dict
  rope_type = scaling.get("rope_type", "default")
  if rope_type == "default":
    return inv_freq.astype(np.float32), 1.0
  if rope_type == "linear":
    return (inv_freq / scaling["factor"]).astype(np.float32), 1.0
  if rope_type == "llama3":
    return _llama3(inv_freq, scaling, cfg.max_position_embeddings).astype(np.float32), 1.0
  if rope_type == "yarn":
    inv, attention_scale = _yarn(cfg, scaling)
    return inv.astype(np.float32), attention_scale
  raise ValueError(
      f"unsupported rope_scaling type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")


def _llama3(inv_freq: np.ndarray, scaling: dict, max_positions: int) -> np.ndarray:
  """Llama 3.1: divide low frequencies by `factor`, keep high ones, interpolate in between."""
  factor = scaling["factor"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  context = scaling.get("original_max_position_embeddings", max_positions)
  wavelength = 2 * math.pi / inv_freq
  scaled = np.where(wavelength > context / low, inv_freq / factor, inv_freq)
  smooth = (context / wavelength - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  is_medium = (wavelength >= context / high) & (wavelength <= context / low)
  return np.where(is_medium, smoothed, scaled)


def _yarn(cfg: ModelConfig, scaling: dict) -> tuple[np.ndarray, float]:
  """YaRN (arXiv 2309.00071): blend interpolated and extrapolated frequencies by wavelength."""
  dim, base, factor = cfg.head_dim, cfg.rope_theta, scaling["factor"]
  context = scaling.get("original_max_position_embeddings", cfg.max_position_embeddings)

  def mscale(scale: float, m: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  attention_scale = scaling.get("attention_factor")
  if attention_scale is None:
    m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    attention_scale = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

  def correction_dim(rotations: float) -> float:
    return dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low = correction_dim(scaling.get("beta_fast", 32))
  high = correction_dim(scaling.get("beta_slow", 1))
  if scaling.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoid a zero-width ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
  freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  extrapolation_weight = 1 - ramp
  inv = (1 / (factor * freqs)) * ramp + (1 / freqs) * extrapolation_weight
  return inv, float(attention_scale)


def apply_rope(x_BxTxHqxH: jnp.ndarray, positions_BxT: jnp.ndarray, inv_freq_H2: np.ndarray,
               attention_scale: float) -> jnp.ndarray:
  """Rotates each head by its position; the first and second halves of H form the pairs."""
  angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq_H2
  angles_BxTx1xH = jnp.concatenate([angles_BxTxH2, angles_BxTxH2], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles_BxTx1xH) * attention_scale, jnp.sin(angles_BxTx1xH) * attention_scale
  x = x_BxTxHqxH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxTxHqxH.dtype)
