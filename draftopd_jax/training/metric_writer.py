"""Training metrics to a JSONL file (the record of a run, appended across restarts) and to
TensorBoard event files (for watching it)."""

import json
import os
import pathlib
from numbers import Number

from draftopd_jax.training.event_file import EventFileWriter


class MetricWriter:
  """Writes nothing when not `enabled` (the processes other than 0 of a multi-process run)."""

  def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True, enabled: bool = True):
    workdir = pathlib.Path(workdir)
    self.jsonl = open(workdir / "metrics.jsonl" if enabled else os.devnull, "a")
    self.tensorboard = (EventFileWriter(workdir / "tensorboard") if tensorboard and enabled
                        else None)

  def write(self, step: int, record: dict) -> None:
    """Appends {"step": step, **record}; numbers and lists of numbers (one curve per index,
    e.g. accuracy per block slot) also go to TensorBoard."""
    self.jsonl.write(json.dumps({"step": step, **record}) + "\n")
    self.jsonl.flush()
    if self.tensorboard is None:
      return
    scalars = {}
    for name, value in record.items():
      values = value if isinstance(value, list) else [value]
      for i, v in enumerate(values):
        if isinstance(v, Number):
          scalars[f"{name}/{i}" if isinstance(value, list) else name] = float(v)
    self.tensorboard.add_scalars(step, scalars)
    self.tensorboard.flush()

  def close(self) -> None:
    self.jsonl.close()
    if self.tensorboard is not None:
      self.tensorboard.close()
