"""The small pieces of state the training loop keeps, one object each.

:class:`Budget` (when to validate and stop), :class:`Position` (the step, epoch and sample
counters a checkpoint saves), :class:`EarlyStopping` (the best validation so far),
:class:`MetricLog` (the rows of the returned log), :class:`CheckpointSchedule` (at most one
checkpoint per step), :class:`Cancellation` (a stop asked on any rank) and
:class:`ProgressReport` (the caller's callback and the progress bar).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from mist_core import distributed
from mist_core.training.state import Progress, ResumeFrom, TrainState

__all__ = [
    "LOG_COLUMNS",
    "Budget",
    "Cancellation",
    "CheckpointSchedule",
    "EarlyStopping",
    "MetricLog",
    "Position",
    "ProgressReport",
]

#: The columns of the training log, in order.
LOG_COLUMNS = ("step", "epoch", "split", "name", "value")


@dataclass(frozen=True)
class Budget:
    """How long training may run, and when it validates.

    ``total`` is the number of steps the run takes at most, when it is known (``None`` for
    ``max_epochs`` over a loader without a length); ``eval_every`` validates every this many
    steps, ``None`` once per epoch.
    """

    max_epochs: int | None
    max_iterations: int | None
    total: int | None
    eval_every: int | None

    @classmethod
    def plan(
        cls,
        max_epochs: int | None,
        max_iterations: int | None,
        steps_per_epoch: int | None,
        eval_every: int | None,
    ) -> Budget:
        """Work out ``total``; without ``eval_every``, an iteration budget validates 10 times."""
        total: float | None = max_iterations
        if max_epochs is not None and steps_per_epoch is not None:
            total = min(total or math.inf, max_epochs * steps_per_epoch)
        if eval_every is None and max_iterations is not None and total is not None:
            eval_every = max(1, int(total) // 10)
        total_steps = int(total) if total is not None else None
        return cls(max_epochs, max_iterations, total_steps, eval_every)

    @staticmethod
    def steps_per_epoch(loader: Iterable) -> int | None:
        """The loader's length, ``None`` when it has none (an iterable dataset)."""
        try:
            return len(loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def allows_epoch(self, step: int, epoch: int) -> bool:
        """Whether an epoch may start at this step (no budget spent yet)."""
        return (self.max_iterations is None or step < self.max_iterations) and (
            self.max_epochs is None or epoch < self.max_epochs
        )

    def iterations_spent(self, step: int) -> bool:
        return self.max_iterations is not None and step >= self.max_iterations

    def validates_after_step(self, step: int) -> bool:
        return self.eval_every is not None and step % self.eval_every == 0

    @property
    def validates_per_epoch(self) -> bool:
        return self.eval_every is None


@dataclass
class Position:
    """Where training stands: the counters a checkpoint saves and a resume restores.

    ``epoch`` counts completed epochs, ``batches_in_epoch`` the batches done in the current
    one; ``samples`` counts the samples seen by this call (not before a resume).
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples: int = 0

    @classmethod
    def resume(cls, resume: ResumeFrom | None) -> Position:
        if resume is None:
            return cls()
        return cls(resume.step, resume.epoch, resume.batches_in_epoch)

    def advance(self, batch_size: int) -> None:
        """One optimizer step over ``batch_size`` samples."""
        self.step += 1
        self.batches_in_epoch += 1
        self.samples += batch_size

    def end_epoch(self) -> None:
        """Count the epoch done; one that yielded no batch means there is no training data."""
        if self.batches_in_epoch == 0:
            raise ValueError("the training data yielded no batches")
        self.epoch += 1
        self.batches_in_epoch = 0


class EarlyStopping:
    """The best validation loss so far, and whether ``patience`` validations in a row have
    failed to beat it.

    With ``enabled=False`` it still records the best step (the log reports it) but never
    says stop and keeps no copy of the weights.
    """

    def __init__(self, patience: int, enabled: bool = True) -> None:
        self.patience = patience
        self.enabled = enabled
        self.best_loss = math.inf
        self.best_step = 0
        self._best_state: dict[str, Any] | None = None
        self._bad = 0

    def update(self, loss: float, step: int, model: nn.Module) -> bool:
        """Record a validation loss of ``model`` at ``step``; True when training should stop."""
        if loss < self.best_loss:
            self.best_loss, self.best_step, self._bad = loss, step, 0
            if self.enabled:
                self._best_state = copy.deepcopy(model.state_dict())
            return False
        self._bad += 1
        return self.enabled and self._bad >= self.patience

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into ``model``; False when there are none to load."""
        if self._best_state is None:
            return False
        model.load_state_dict(self._best_state)
        return True


class MetricLog:
    """The rows of the training log: ``(step, epoch, split, name, value)``."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, str, str, float]] = []

    def add(self, step: int, epoch: int, split: str, values: Mapping[str, float]) -> None:
        """One row per named value (``"loss"``, ``"I(x;y)"``...), in the mapping's order."""
        self.rows.extend((step, epoch, split, name, value) for name, value in values.items())

    @property
    def last_split(self) -> str | None:
        return self.rows[-1][2] if self.rows else None

    def frame(self, **attrs: Any) -> pd.DataFrame:
        """The long-form log, with ``attrs`` in ``DataFrame.attrs``."""
        log = pd.DataFrame(self.rows, columns=list(LOG_COLUMNS))
        log.attrs.update(attrs)
        return log


class CheckpointSchedule:
    """Hands :class:`TrainState` s to the caller's ``checkpoint`` function, at most once per
    step: an epoch that ends the run is saved once, under the epoch's reason."""

    def __init__(self, checkpoint: Callable[[TrainState], None] | None) -> None:
        self.checkpoint = checkpoint
        self._last_step = -1

    def save(self, state: TrainState) -> bool:
        """Save ``state`` unless this step is saved already; True when it was handed on."""
        if self.checkpoint is None or state.step == self._last_step:
            return False
        self.checkpoint(state)
        self._last_step = state.step
        return True


class Cancellation:
    """A stop asked through ``stop_event`` on any rank, seen by every rank at the same step.

    :meth:`requested` is a collective under a process group: every rank calls it after
    every step, whether or not it has a ``stop_event``.
    """

    def __init__(self, stop_event: threading.Event | None, device: torch.device | str) -> None:
        self.stop_event = stop_event
        self.device = device

    def requested(self) -> bool:
        asked = self.stop_event is not None and self.stop_event.is_set()
        return distributed.any_rank(asked, self.device)


class ProgressReport:
    """The caller's ``callback`` (a :class:`Progress` after every step and validation) and,
    when ``verbose``, a tqdm bar over the training steps."""

    def __init__(
        self,
        callback: Callable[[Progress], None] | None,
        total: int | None,
        verbose: bool = False,
        initial_step: int = 0,
    ) -> None:
        self.callback = callback
        self.total = total
        self.start = time.perf_counter()
        self.bar = None
        if verbose:
            from tqdm.auto import tqdm  # only the verbose runs pay for importing it

            self.bar = tqdm(total=total, initial=initial_step, desc="training", unit="step")

    def __call__(self, at: Position, split: str, loss: float, mi: dict[str, float]) -> None:
        if self.callback is not None:
            elapsed = time.perf_counter() - self.start
            self.callback(
                Progress(at.step, at.epoch, split, loss, mi, self.total, at.samples, elapsed)
            )
        if self.bar is not None and split == "train":
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
