"""Metric rows on their way to a run's metrics.csv."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from mist_core.runs import Run

__all__ = ["FLUSH_EVERY_S", "MetricBuffer", "MetricRow"]

#: How often buffered rows are appended: a step can take milliseconds, and a file append
#: per step would cost more than the step.
FLUSH_EVERY_S = 1.0

#: ``(step, epoch, split, name, value)``, as :meth:`mist_core.runs.Run.append_metrics` takes.
MetricRow = tuple[int, int, str, str, float]


class MetricBuffer:
    """Rows added from the training thread, appended to a run in batches. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[MetricRow] = []
        self._last_flush = 0.0

    def add(self, rows: Iterable[MetricRow]) -> None:
        with self._lock:
            self._rows.extend(rows)

    def flush(self, run: Run | None, force: bool = False) -> None:
        """Append the buffered rows to ``run`` if ``force`` or :data:`FLUSH_EVERY_S` has
        passed since the last append; rows that could not be written stay buffered (the
        error is raised), so a later flush writes them in order."""
        now = time.monotonic()
        if run is None or (not force and now - self._last_flush < FLUSH_EVERY_S):
            return
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            try:
                run.append_metrics(rows)
            except BaseException:
                with self._lock:
                    self._rows[:0] = rows
                raise
        self._last_flush = now
