"""Prompt sources (ShareGPT, HumanEval, MT-Bench) and the deterministic held-out split, the
regenerated SFT corpus, and prompt encoding and padding."""
