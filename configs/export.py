"""Export a trained drafter to a Hugging Face layout that serving engines load.

Run (a drafter checkpoint from configs/sft.py or configs/opd.py; writes config.json and
model.safetensors to the workdir):
  python -m draftopd_jax.main --config=configs/export.py \
      --config.drafter=runs/opd/drafter --workdir=/tmp/export_dflash
  python -m draftopd_jax.main --config=configs/export.py:speculators \
      --config.drafter=runs/opd/drafter --workdir=/tmp/export_speculators
Formats (docs/export_formats.md): `dflash` (z-lab DFlash, the default for DFlash drafters),
`eagle3` (SpecForge / SafeAILab EAGLE-3, the default for EAGLE-3 drafters), `speculators` (vLLM
speculators, either drafter), and `packed`: our own checkpoint layout with bfloat16 weights in one
safetensors file, the form of the drafters shipped in draftopd_jax/drafters/ (io/zoo.py):
  python -m draftopd_jax.main --config=configs/export.py:packed \
      --config.drafter=WORKDIR/best_drafter --workdir=draftopd_jax/drafters/NAME
The export is loaded back and its logits compared with the checkpoint's before the job reports
success.
"""

import ml_collections

VARIANTS = ("auto", "dflash", "eagle3", "speculators", "packed")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "auto"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/export.py; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.mode = "export"
  c.model = "smollm2-135m-instruct"  # the target the drafter was trained for
  c.dtype = "float32"
  c.drafter = ""  # a drafter checkpoint directory (drafter.json + params)
  c.format = variant  # "auto": dflash for DFlash drafters, eagle3 for EAGLE-3 drafters
  # The target as serving engines should load it (speculators' verifier.name_or_path).
  c.verifier = "HuggingFaceTB/SmolLM2-135M-Instruct"
  return c.lock()  # a misspelt key in a file that builds on this one fails where it is set
