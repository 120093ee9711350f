"""Checkpoints written in a background thread, one at a time, while training goes on."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["CheckpointWriter"]


def _lower_this_threads_priority() -> None:
    """Linux schedules threads separately: a nice writer thread leaves the cores to torch."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: write at normal priority
        pass


class CheckpointWriter:
    """Runs one checkpoint write at a time in a low-priority thread.

    Saving a model and its optimizer state takes long enough (hundreds of MB) that training
    should not wait for it; :meth:`wait` is where an error of the write reaches the caller.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, write: Callable[[], None]) -> None:
        """Run ``write`` in the background, after the previous write has ended (checkpoints
        reach the disk in order)."""
        self.wait()

        def run() -> None:
            _lower_this_threads_priority()  # training keeps the cores; the disk can wait
            try:
                write()
            except BaseException as error:  # noqa: BLE001 - re-raised by wait()
                self._error = error

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight (if any) has ended.

        Raises:
            RuntimeError: the last write failed (its error chained), reported once.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"could not save a checkpoint: {error}") from error
