"""Pure-functional networks: the target decoder family (dense and mixture-of-experts), the DFlash and EAGLE-3 drafters, and the
drafter interface the engine and the training steps use (`drafters.py`).

Tensor names end in their shape, one letter (or letter group) per axis: `logits_BxNxK1xV`. Every
letter has one meaning throughout the package:

  B    batch rows                       T    tokens of this forward (its query positions)
  S    a whole sequence: token buffer, cache slots
  P    prompt width (padded)            M    chosen positions of a sequence (say, for logits)
  D    model width                      E    attention output width, Hq x H
  F    tapped target layers (features)  L    layers of a stacked weight or cache
  V    target vocabulary                Vd   draft vocabulary (EAGLE-3)
  K    block size: the anchor slot and K-1 proposals; K1 = K - 1 proposal slots, K2 = K - 2
  N    blocks (anchors) per row         U    unrolled training-time-test steps (EAGLE-3)
  Hq   query heads                      Hkv  key/value heads; G = Hq / Hkv query heads per KV head
  R    query rows of one KV head, T x G H    head dimension; H2 = H / 2 rotary frequencies
  O, I output and input width of a weight matrix
  X    experts of a MoE layer           A    experts routed per token; J an expert's hidden width

Merged axes are written together (`BxNK1xV`: N x K1 rows per batch row), `_` stands for any
trailing axes, and a number is a literal size or a factor (`2D`: two D-wide inputs side by side).
"""

from draftopd_jax.models.config import ModelConfig
from draftopd_jax.models.transformer import (ForwardOutput, KVCache, Params, forward,
                                             forward_sequences, init_params, param_shapes)

__all__ = ["ForwardOutput", "KVCache", "ModelConfig", "Params", "forward", "forward_sequences",
           "init_params", "param_shapes"]
