"""Learning-rate schedules for :func:`~mist_core.train_mi_estimator`.

A schedule is a pure function of the step and the run's planned number of steps, so a
resumed run recomputes its learning rate from the step counter and needs no saved state.

- ``"constant"``: the given learning rate throughout (the seed's training).
- ``"one-cycle"``: a short warm-up and a long cool-down (Smith and Topin, "Super-convergence",
  2017). The rate rises along a half cosine from ``lr / 25`` to ``lr`` over the first quarter
  of the steps, then falls along a half cosine to ``lr / 250,000``. A network trained from
  scratch reaches a given MI in fewer steps, and the final weights (and batch-norm running
  statistics) settle as the rate falls, so evaluation-mode MI after the last epoch is the
  run's, not a lucky or unlucky snapshot.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "check_schedule_name", "lr_factor"]

SCHEDULES = ("constant", "one-cycle")
_WARM_UP = 0.25  # part of the steps spent rising
_START = 1 / 25  # the first step's rate, as a part of the peak
_END = _START / 1e4  # the last step's rate, as a part of the peak


def check_schedule_name(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")


def _cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` (fraction 0) to ``end`` (fraction 1) along a half cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def lr_factor(schedule: str, step: int, total: int | None) -> float:
    """The learning rate of step ``step`` (0 for the first) as a multiple of the given one,
    in a run of ``total`` steps.

    >>> lr_factor("constant", 10, 100)
    1.0
    >>> [round(lr_factor("one-cycle", s, 101), 3) for s in (0, 25, 100)]
    [0.04, 1.0, 0.0]
    """
    if schedule == "constant":
        return 1.0
    check_schedule_name(schedule)
    if total is None:
        raise ValueError(
            f"lr_schedule={schedule!r} needs to know the run's length: give max_iterations, "
            "or training data with a length (a DataLoader over a sized dataset)"
        )
    last = max(total - 1, 1)
    peak = max(int(round(_WARM_UP * last)), 1)
    step = min(max(step, 0), last)
    if step <= peak:
        return _cosine(_START, 1.0, step / peak)
    return _cosine(1.0, _END, (step - peak) / (last - peak))
