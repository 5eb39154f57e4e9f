"""Training checkpoints with orbax: the full train state plus the data position, keep-last-N.

A resumed run restores params, optimizer state, step and RNG exactly, and continues the data
stream at the saved position, so it reproduces an uninterrupted run.
"""

import pathlib

import jax
import orbax.checkpoint as ocp

from draftopd_jax.training.trainer import TrainState


class Checkpointer:

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    self.manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def save(self, state: TrainState, data_position: int) -> None:
    step = int(state.step)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"step": step, "data_position": data_position})), force=True)
    self.manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, like: TrainState) -> tuple[TrainState, int]:
    """The latest checkpoint restored into the structure of `like`, and its data position."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self.manager.restore(self.manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]["data_position"]

  def close(self) -> None:
    self.manager.close()
