"""Do the posterior regions mean what they claim? Coverage of highest-density regions.

A density q over the pixels draws its alpha highest-density (HPD) region: the pixels of
highest density holding a fraction alpha of its mass (:func:`mist_core.posterior.hpd_thresholds`).
The regions are *calibrated* when, over many faces, the true landmark falls inside the
alpha-region a fraction alpha of the time, for every alpha.

One number per face says it all: the **HPD rank** of the truth, the mass of the pixels whose
density exceeds the density at the truth (:func:`hpd_rank`). The truth lies inside the
alpha-region exactly when its rank is below alpha, so the coverage at every level comes
from the ranks of the test faces (:func:`coverage`), each with its binomial standard error.
Under calibration the ranks are uniform on [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LEVELS", "Coverage", "coverage", "hpd_rank"]

#: The nominal levels a calibration table reports.
LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def hpd_rank(log_prob: np.ndarray, log_prob_at_truth: float) -> float:
    """The mass of the grid's pixels with a higher density than the truth's: the truth lies
    inside every HPD region of a larger mass, and outside the others.

    Args:
        log_prob: ``[H, W]`` (or any shape) log-density on the pixel grid, as the pages draw
            it; normalised here over the grid, one pixel being one unit of area.
        log_prob_at_truth: the log-density at the true position, on the same scale.

    Returns:
        A number in [0, 1]: 0 when the truth is at the mode, near 1 far in the tails (1 when
        the truth is less likely than every pixel).
    """
    flat = np.asarray(log_prob, dtype=np.float64).ravel()
    if flat.size == 0:
        raise ValueError("log_prob is empty: a grid of at least one pixel is needed")
    if not math.isfinite(log_prob_at_truth):
        return 1.0 if log_prob_at_truth < 0 else 0.0
    top = flat.max()
    probs = np.exp(flat - top)
    return float(probs[flat > log_prob_at_truth].sum() / probs.sum())


@dataclass(frozen=True)
class Coverage:
    """How often the ``level`` HPD region held the truth: ``observed`` of ``n`` faces, with
    the binomial standard error of that fraction."""

    level: float
    observed: float
    std_error: float
    n: int

    @property
    def gap(self) -> float:
        """``observed - level``: positive when the regions are too wide (underconfident)."""
        return self.observed - self.level


def coverage(
    ranks: Sequence[float] | np.ndarray, levels: Sequence[float] = LEVELS
) -> list[Coverage]:
    """The observed coverage at each nominal level, from the HPD ranks of ``n`` faces.

    The truth is inside the ``level`` region when its rank is below ``level`` (as the
    region of :func:`mist_core.posterior.hpd_thresholds` is drawn). The
    standard error is that of a binomial fraction, ``sqrt(p (1 - p) / n)`` at the nominal
    ``p = level`` (the spread the observed fraction has when the regions are calibrated).

    Raises:
        ValueError: no ranks, a rank outside [0, 1], or a level outside (0, 1).
    """
    values = np.asarray(ranks, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no HPD ranks: evaluate at least one face")
    if np.any(~np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError("HPD ranks must lie in [0, 1] (see hpd_rank)")
    n = int(values.size)
    out = []
    for level in levels:
        if not 0.0 < level < 1.0:
            raise ValueError(f"coverage levels must lie in (0, 1), got {level}")
        observed = float(np.mean(values < level))
        out.append(Coverage(level, observed, math.sqrt(level * (1.0 - level) / n), n))
    return out
