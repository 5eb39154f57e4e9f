"""Real checkpoints in: Hugging Face folders, GGUF files, tokenizers and the model zoo."""

from draftopd_jax.io.zoo import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
