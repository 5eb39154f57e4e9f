"""Preemption: SIGTERM (how TPU VMs and SLURM preempt a job) asks the training loop to save a
checkpoint and stop; the job then exits with `EXIT_CODE`, which the launchers in `launch/` read as
"requeue me". Rerunning the same command resumes from that checkpoint.
"""

import signal
import types

EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, run again


class Preempted(Exception):
  """Raised by a training loop after it saved its checkpoint on request."""


class PreemptionWatch:
  """Within `with PreemptionWatch() as watch:`, SIGTERM only sets `watch.requested`; the loop
  checks it between steps, so a step is never cut in half. The old handler returns on exit."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
    self.requested = True

  def __enter__(self) -> "PreemptionWatch":
    self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    signal.signal(signal.SIGTERM, self._previous)
