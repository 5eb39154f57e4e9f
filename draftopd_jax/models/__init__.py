"""Pure-functional networks: the target decoder family, the DFlash and EAGLE-3 drafters, and the
drafter interface the engine and the training steps use (`drafters.py`)."""

from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.transformer import (ForwardOutput, KVCache, Params, forward,
                                             forward_sequences, init_params, param_shapes)

__all__ = ["ForwardOutput", "KVCache", "ModelConfig", "Params", "forward", "forward_sequences",
           "init_params", "param_shapes"]
