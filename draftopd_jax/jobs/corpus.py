"""`main.py` mode `corpus`: regenerates the SFT corpus (`data/regeneration.py`) and reports it."""

import pathlib

from draftopd_jax.data.regeneration import build
from draftopd_jax.errors import UserError


def run_corpus(config, workdir: str | None) -> None:
  if not workdir and not config.data.corpus:
    raise UserError("set --workdir or config.data.corpus: the folder the corpus is written to")
  root = pathlib.Path(config.data.corpus or pathlib.Path(workdir) / "corpus")
  corpus = build(config, root)
  t = corpus.totals()
  print(f"corpus {root}: {t['examples']} prompts, {t['response_tokens']} response tokens "
        f"({t['prompt_tokens']} prompt tokens) in {t['seconds'] / 3600:.2f} h of generation, "
        f"{t['response_tokens'] / max(t['seconds'], 1e-9):.1f} response tokens/s, "
        f"{t['response_tokens'] / max(t['generated_slots'], 1):.0%} of decode slots used")
