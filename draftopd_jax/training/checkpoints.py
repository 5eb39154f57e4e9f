"""Training checkpoints with orbax: the full train state plus the data position, keep-last-N.

A resumed run restores params, optimizer state, step and RNG exactly, and continues the data
stream at the saved position, so it reproduces an uninterrupted run. Orbax writes a checkpoint to
a temporary directory and renames it when complete, so a crash mid-save leaves no half checkpoint
behind; one damaged later (a truncated or corrupted file) is skipped with a warning and the one
before it is used.
"""

import pathlib
import sys

import jax
import orbax.checkpoint as ocp

from draftopd_jax.errors import UserError
from draftopd_jax.training.trainer import TrainState


class Checkpointer:

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    self.manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def save(self, state: TrainState, data_position: int) -> None:
    """Saves the state at its step (once: a step already saved is left as it is)."""
    step = int(state.step)
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"step": step, "data_position": data_position})), force=True)
    self.manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, like: TrainState) -> tuple[TrainState, int]:
    """The latest readable checkpoint restored into the structure (and shardings) of `like`, and
    its data position."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax and tensorstore raise many kinds for damaged files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        print(f"warning: checkpoint {step} in {self.manager.directory} is unreadable ({reason}); "
              "trying the one before it", file=sys.stderr)
        continue
      state, meta = restored["state"], restored["meta"]
      if int(state.step) != step or meta.get("step") != step:
        print(f"warning: checkpoint {step} in {self.manager.directory} is inconsistent "
              f"(holds step {int(state.step)}); trying the one before it", file=sys.stderr)
        continue
      return state, meta["data_position"]
    raise UserError(f"no readable checkpoint among steps {steps} in {self.manager.directory}; "
                    "move the directory away to start over")

  def close(self) -> None:
    self.manager.close()
