"""Pure-functional networks: the target decoder family (and, later, the drafters)."""

from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.transformer import (ForwardOutput, KVCache, Params, forward,
                                             init_params, param_shapes)

__all__ = ["ForwardOutput", "KVCache", "ModelConfig", "Params", "forward", "init_params",
           "param_shapes"]
