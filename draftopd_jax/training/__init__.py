"""Drafter training: data, SFT losses, the train step and loop."""
