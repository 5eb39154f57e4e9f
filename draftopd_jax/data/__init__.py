"""Prompt sources (ShareGPT, HumanEval, MT-Bench) and the deterministic held-out split."""
