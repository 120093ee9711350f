"""What a UI polls from a job: an immutable :class:`JobSnapshot`, and the run's environment."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

import mist_core
from mist_core.experiment import ExperimentConfig
from mist_core.results import PairEstimate
from mist_core.runs import RunStatus
from mist_core.training import Progress

__all__ = [
    "ENDED",
    "MAX_CURVE_POINTS",
    "Curve",
    "Curves",
    "JobSnapshot",
    "environment",
    "speed",
    "thin_curve",
]

#: The states a job never leaves.
ENDED = (RunStatus.STOPPED, RunStatus.FINISHED, RunStatus.FAILED)
#: The most points per curve a snapshot carries: a UI redraws every curve on each poll, so a
#: long run's thousands of steps are thinned evenly (the last point is always kept).
MAX_CURVE_POINTS = 2000

#: ``((step, value), ...)`` in step order.
Curve = tuple[tuple[int, float], ...]
#: A curve per name: ``"loss"`` and ``"I(encoder;landmark)"``.
Curves = Mapping[str, Curve]


@dataclass(frozen=True)
class JobSnapshot:
    """An immutable copy of a job's progress, safe to read from any thread.

    ``train_curves`` / ``valid_curves`` map ``"I(encoder;landmark)"`` (and ``"loss"``) to
    ``((step, value), ...)``; ``mi_table`` holds the final test-set estimates, one per
    (encoder, landmark) pair, once the job has finished.
    """

    id: str
    run_name: str | None
    state: RunStatus
    config: ExperimentConfig
    device: str
    epoch: int = 0
    step: int = 0
    total_steps: int | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    loss: float | None = None
    train_curves: Curves = field(default_factory=dict)
    valid_curves: Curves = field(default_factory=dict)
    mi_table: tuple[PairEstimate, ...] = ()
    message: str = ""
    error: str | None = None
    traceback: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.state in ENDED

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 while the total is unknown)."""
        if not self.total_steps:
            return 1.0 if self.state is RunStatus.FINISHED else 0.0
        return min(1.0, self.step / self.total_steps)


def thin_curve(points: Sequence[tuple[int, float]]) -> Curve:
    """At most :data:`MAX_CURVE_POINTS` of ``points``, evenly spaced, the last one kept."""
    if len(points) <= MAX_CURVE_POINTS:
        return tuple(points)
    stride = len(points) / MAX_CURVE_POINTS
    picked = [points[int(i * stride)] for i in range(MAX_CURVE_POINTS - 1)]
    return (*picked, points[-1])


def speed(
    progress: Progress, first_step: tuple[int, float], batch_size: int
) -> tuple[float | None, float | None]:
    """Samples per second since the first training step, and the seconds left (or ``None``).

    ``first_step`` is ``(samples, elapsed_s)`` at the first training step: measuring from
    there leaves the preparation and the first step's warm-up out of the rate.
    """
    first_samples, first_time = first_step
    elapsed = progress.elapsed_s - first_time
    if elapsed <= 0 or progress.samples <= first_samples:
        return None, None
    rate = (progress.samples - first_samples) / elapsed
    steps_per_s = rate / batch_size
    eta = None
    if progress.total_steps and steps_per_s > 0:
        eta = max(0.0, (progress.total_steps - progress.step) / steps_per_s)
    return rate, eta


def environment(device: torch.device | str) -> dict[str, str]:
    """Versions and hardware, for a run's summary."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "mist_core": mist_core.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name or platform.machine(),
        "threads": str(torch.get_num_threads()),
    }
