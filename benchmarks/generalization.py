"""Is SFT limited by its data? Drafters' teacher-forced accuracy on examples they trained on
against held-out ones.

For each drafter: the DFlash corpus recipe's loss (`configs/sft.py:corpus`: CE, 96 random anchors
per 512-token sequence, slot weights exp(-(k-1)/4), one fixed key) and accuracy per slot on
  * `stream@P` for each P of --positions: the --examples training examples at positions P, P + 1,
    ... of the training stream (`loop.stream_indices`, seed 0, the shipped run's), which a drafter
    trained on if its run got past them (8 examples per step);
  * `heldout`: the first --examples examples of the held-out corpus (`configs/corpus.py:heldout`).
Between a drafter that has seen a stream slice and one that has not yet, the accuracy gained on
that slice beyond the held-out gain is memorization.

  python benchmarks/generalization.py smollm2-135m-instruct-dflash [DRAFTER ...] \
      [--revisions REV ...] [--positions 0 10688] [--examples 64] [--out PNG]
  python benchmarks/generalization.py --replot RESULTS.json --out PNG

DRAFTER: a checkpoint directory or zoo name; --revisions: git revisions whose shipped drafter
(`draftopd_jax/drafters/smollm2-135m-instruct-dflash`) is read with `git show`. The last line
printed is JSON (the RESULTS that --replot draws again); --out plots loss and first-slot accuracy
per drafter and set.
"""

import argparse
import json
import pathlib
import subprocess
import tempfile

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from draftopd_jax.io import load_model
from draftopd_jax.io.drafter_checkpoint import load_drafter
from draftopd_jax.jobs.sft import corpus_examples
from draftopd_jax.sft import dflash_loss
from draftopd_jax.sft.validation import Validation
from draftopd_jax.training import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
CORPORA = REPO / "corpora" / "smollm2-135m-instruct"
SHIPPED = "draftopd_jax/drafters/smollm2-135m-instruct-dflash"
SEQ_LEN, BATCH, ANCHORS, GAMMA = 512, 8, 96, 4.0  # configs/sft.py:corpus as the drafters ran it
STREAM_SIZE = 10_752  # examples the shipped run's stream permuted (the corpus grew later)


def drafter_at(revision: str, into: pathlib.Path) -> pathlib.Path:
  """The shipped drafter as of a git revision, copied into `into`/REVISION."""
  folder = into / revision
  folder.mkdir()
  for name in ("drafter.json", "params.safetensors"):
    blob = subprocess.run(["git", "show", f"{revision}:{SHIPPED}/{name}"], cwd=REPO, check=True,
                          capture_output=True).stdout
    (folder / name).write_bytes(blob)
  return folder


def plot(results: dict, out: pathlib.Path) -> None:
  drafters = list(results["drafters"])
  sets = list(results["drafters"][drafters[0]])
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.arange(len(drafters))
  for name in sets:
    scores = [results["drafters"][d][name] for d in drafters]
    loss_ax.plot(x, [s["validation_loss"] for s in scores], marker="o", label=name)
    acc_ax.plot(x, [s["validation_accuracy_by_slot"][0] for s in scores], marker="o", label=name)
  loss_ax.set(ylabel="loss (CE, slot-weighted)", title="Teacher-forced loss")
  acc_ax.set(ylabel="accuracy of the first proposal", title="First-slot accuracy")
  for ax in (loss_ax, acc_ax):
    ax.set_xticks(x, drafters, rotation=30, fontsize=8)
    ax.set_xlabel("drafter")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("drafters", nargs="*")
  parser.add_argument("--revisions", nargs="*", default=[])
  parser.add_argument("--positions", type=int, nargs="*", default=[0, 10688])
  parser.add_argument("--examples", type=int, default=64)
  parser.add_argument("--replot", type=pathlib.Path, help="a RESULTS.json to plot again")
  parser.add_argument("--out", type=pathlib.Path, help="a PNG of the results")
  args = parser.parse_args()
  if args.replot:
    plot(json.loads(args.replot.read_text()), args.out)
    return
  model = load_model("smollm2-135m-instruct")
  train = corpus_examples(str(CORPORA / "train"), STREAM_SIZE, model, "STREAM_SIZE")
  sets = {f"stream@{p}": [train[i] for i in loop.stream_indices(0, STREAM_SIZE, p, args.examples,
                                                                 slice(None))]
          for p in args.positions}
  sets["heldout"] = corpus_examples(str(CORPORA / "heldout"), args.examples, model, "--examples",
                                    split="heldout")
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    drafters = args.drafters + [str(drafter_at(r, pathlib.Path(tmp))) for r in args.revisions]
    names = args.drafters + args.revisions
    for name, path in zip(names, drafters):
      drafter, params = load_drafter(path, model.cfg, model.tokenizer)
      loss = dflash_loss.batch_loss(cfg=drafter.cfg, target_cfg=model.cfg, num_anchors=ANCHORS,
                                    gamma=GAMMA, distill=False)
      results[name] = {}
      for split, examples in sets.items():
        scores = Validation(loss, examples, SEQ_LEN, BATCH, model.tokenizer.pad_id)(
            params, model.params)
        results[name][split] = scores
        print(f"{name} {split}: loss {scores['validation_loss']:.3f}, accuracy by slot "
              f"{np.round(scores['validation_accuracy_by_slot'], 3).tolist()}", flush=True)
  summary = {"examples": args.examples, "positions": args.positions, "seq_len": SEQ_LEN,
             "num_anchors": ANCHORS, "drafters": results}
  if args.out:
    plot(summary, args.out)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
