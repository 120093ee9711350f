"""The forked worker processes that draw faces in parallel, and their clean-up.

Drawing is numpy code that holds the GIL, so parallel drawing needs processes. They are
forked (cheap, and they inherit the imported modules), die with their parent (SIGKILL from
the kernel via ``PR_SET_PDEATHSIG`` on Linux), take SIGTERM and SIGINT with the default
action, and are killed at once when their parent stops using them early.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from mist_core.data.landmarks import LANDMARKS
from mist_core.data.stopping import check_stop

__all__ = [
    "CHUNK_FACES",
    "TASK_FACES",
    "concatenate",
    "ended_with",
    "kill_pool",
    "start_pool",
    "task_blocks",
    "wait_result",
]

logger = logging.getLogger("mist_core.data.synthetic_faces")  # one logger for the package

#: Faces a worker process draws per task: a fraction of a second of drawing, long enough to
#: make the hand-over to this process cheap in comparison, short enough to balance workers.
TASK_FACES = 16
#: Faces per chunk of :meth:`SyntheticFaces.render_chunks` (30 MB at 218 x 178).
CHUNK_FACES = 256
_POLL_S = 0.1  # how often a stop is checked while waiting for the workers
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_init(parent: int) -> None:
    """Run first in each forked worker: die with the parent, default signal handling."""
    # The parent may have a graceful-stop handler (the CLI's SIGTERM): a worker must not
    # keep it, or it would ignore SIGTERM and outlive a stopped training.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the parent's clean-up still kills us
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def start_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of ``workers`` forked processes, or ``None`` where fork is unavailable."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        with _stop_signals_held():
            pool.submit(int)  # forks every worker now (the fork start method forks them all)
        return pool
    except OSError as error:
        logger.warning("drawing faces in this process (no worker processes: %s)", error)
        return None


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold back SIGTERM and SIGINT's Python handlers while workers are forked, and run them
    right after. A handler that runs inside fork's hooks (Python runs them in the forking
    thread) has its exception ignored ("Exception ignored in: _releaseLock"): the
    KeyboardInterrupt of Ctrl-C, or of the CLI's graceful stop on SIGTERM, would be lost and
    the process would go on drawing. Only the main thread runs Python handlers, so only a
    fork there needs this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if callable(handler):  # SIG_DFL and SIG_IGN are not Python code: nothing to lose
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for signum in caught:
            signal.raise_signal(signum)


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool now: kill its workers (no waiting for their tasks) and reap them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):  # already gone or closed
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.join(timeout=2.0)
        except (OSError, ValueError, AssertionError):
            pass


@contextlib.contextmanager
def ended_with(pool: ProcessPoolExecutor | None) -> Iterator[None]:
    """Ends ``pool`` with the block: on any exception (a stop, Ctrl-C, an error, a generator
    closed by its caller) its workers are killed at once; otherwise they finish their tasks
    and are shut down. A pool the block killed itself (:func:`kill_pool`) is left as it is."""
    try:
        yield
    except BaseException:
        if pool is not None:
            kill_pool(pool)
        raise
    if pool is not None:
        pool.shutdown(wait=True)  # returns at once for a pool killed already


def task_blocks(chunk: list[int]) -> list[list[int]]:
    """A chunk's indices split into worker tasks of at most ``TASK_FACES``."""
    return [chunk[k : k + TASK_FACES] for k in range(0, len(chunk), TASK_FACES)]


def wait_result(future: Future, stop_event: threading.Event | None) -> object:
    """A task's result, checking ``stop_event`` every ``_POLL_S`` while it is drawn."""
    while True:
        check_stop(stop_event, "drawing faces")
        try:
            return future.result(timeout=_POLL_S)
        except TimeoutError:
            continue


def concatenate(
    parts: list[tuple[np.ndarray, dict[str, np.ndarray]]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Blocks of faces ``(uint8 [n_k, H, W, 3], {name: [n_k, 2]})`` joined into one, in order."""
    if len(parts) == 1:
        return parts[0]
    images = np.concatenate([images for images, _ in parts])
    landmarks = {name: np.concatenate([marks[name] for _, marks in parts]) for name in LANDMARKS}
    return images, landmarks
