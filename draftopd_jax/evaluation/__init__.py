"""Acceptance metrics, speed measurement and plots for drafters."""
