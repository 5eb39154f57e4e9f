"""DraftOPD-JAX: training speculative-decoding draft models with on-policy distillation."""
