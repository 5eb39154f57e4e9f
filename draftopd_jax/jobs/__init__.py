"""The jobs `main.py` runs (sft, opd, eval, export, generate, corpus) and the config checks that
run before them."""
