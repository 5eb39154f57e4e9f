"""Acceptance metrics, held-out tau during training, and plots for drafters."""
