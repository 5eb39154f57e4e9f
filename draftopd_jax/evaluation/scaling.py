"""The stop rule's projection: held-out tau as a straight line in log10(training FLOPs), fitted by
least squares on a run's evaluations and read where its schedule ends.

Curves of this kind bend down rather than up as a run goes on, so the projection is an optimistic
reading of where a recipe can get, which is what a stop rule needs: a run projected below its goal
is not worth finishing for that goal.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LogFlopsFit:
  slope: float  # tau gained per tenfold training FLOPs
  intercept: float  # tau at 1 FLOP (a line parameter, not a prediction)
  num_points: int

  def tau_at(self, flops: float) -> float:
    return self.slope * math.log10(flops) + self.intercept

  def flops_for(self, tau: float) -> float:
    """Training FLOPs at which the line reaches `tau` (inf if it never rises)."""
    if self.slope <= 0:
      return math.inf
    return 10 ** ((tau - self.intercept) / self.slope)


def fit_log_flops(points: Sequence[tuple[float, float]]) -> LogFlopsFit:
  """The least-squares line through (training FLOPs, tau) points, in log10 FLOPs."""
  points = [(f, t) for f, t in points if f > 0]
  if len({f for f, _ in points}) < 2:
    raise ValueError(f"a fit needs evaluations at two or more FLOP counts above 0, got {points}")
  log_flops, taus = np.log10([f for f, _ in points]), np.asarray([t for _, t in points])
  slope, intercept = np.polyfit(log_flops, taus, 1)
  return LogFlopsFit(float(slope), float(intercept), len(points))
