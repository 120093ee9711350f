"""The writer lock of a run: :class:`RunWriter` (``.lock`` and ``owner.json``'s heartbeat) and
:class:`RunBusyError`."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from datetime import datetime
from typing import TYPE_CHECKING

from mist_core.runs._files import _Dir, _json_bytes

if TYPE_CHECKING:
    from mist_core.runs.run import Run

try:  # POSIX; elsewhere the heartbeat alone tells whether a run's owner is alive
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("mist_core.runs")  # one logger for the whole package

#: Seconds between two heartbeats of a run's writer (``owner.json``).
HEARTBEAT_S = 5.0
#: A writer on another host whose heartbeat is older than this (seconds) is taken for gone.
STALE_HEARTBEAT_S = 60.0
#: How long :meth:`Run.acquire_writer` retries a lock that a reader probes at that moment.
_ACQUIRE_RETRY_S = 0.25

_HOST = socket.gethostname()


class RunBusyError(RuntimeError):
    """Another live process (or another writer in this process) holds the run's writer lock.

    ``owner`` is that writer's ``owner.json`` (``pid``, ``host``, ``started``, ``heartbeat``)
    when it could be read, else ``None``.
    """

    def __init__(self, message: str, owner: dict | None = None) -> None:
        super().__init__(message)
        self.owner = owner


def _when(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "an unknown time"


def _busy_message(name: str, owner: dict | None) -> str:
    if owner is None:
        return (
            f"run {name!r} is being trained by another process (it holds the run's lock); "
            "stop it there first (or wait)"
        )
    where = (
        "this process"
        if owner["pid"] == os.getpid() and owner["host"] == _HOST
        else (f"process {owner['pid']} on {owner['host']}")
    )
    return (
        f"run {name!r} is being trained by {where} since {_when(owner['started'])}; "
        "stop it there first (or wait)"
    )


#: Writers of this process: a forked child closes its copies of their locks (see below).
_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


def _forget_writers_in_child() -> None:
    """After ``fork``: the child closes its copies of the lock files without unlocking.

    ``flock`` locks belong to the open file, which a forked child shares: a worker process
    that outlived a killed trainer would otherwise keep its run locked (shown as running).
    Unlocking here would unlock the parent's lock too, so the child only closes its copy.
    """
    for writer in list(_WRITERS):
        writer._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writers_in_child)


class RunWriter:
    """The right to write one run: its lock (``fcntl.flock`` on ``<run>/.lock``) and
    ``owner.json`` ({pid, host, started, heartbeat}), refreshed by a daemon thread every
    :data:`HEARTBEAT_S` seconds. Made by :meth:`Run.acquire_writer`.

    :meth:`release` (idempotent; also on leaving a ``with`` block) stops the heartbeat,
    removes ``owner.json`` and unlocks. A process that dies unlocks by itself (the kernel
    closes its files); its ``owner.json`` stays and the run then lists as interrupted.

    Attributes:
        run: the run written.
        owner: what ``owner.json`` holds (``pid``, ``host``, ``started``, ``heartbeat``).
    """

    def __init__(self, run: Run, lock_fd: int, folder: _Dir) -> None:
        self.run = run
        self._lock_fd: int | None = lock_fd
        self._folder = folder  # the run's folder by descriptor: it follows a rename
        now = time.time()
        self.owner = {"pid": os.getpid(), "host": _HOST, "started": now, "heartbeat": now}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._released = False
        self._beat(durable=True)
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"mist-heartbeat-{run.name}", daemon=True
        )
        self._thread.start()
        _WRITERS.add(self)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"RunWriter({self.run.name!r}, pid={self.owner['pid']}, {state})"

    @property
    def held(self) -> bool:
        return not self._released

    def _beat(self, *, durable: bool = False) -> None:
        self.owner = {**self.owner, "heartbeat": time.time()}
        self._folder.write_atomic("owner.json", _json_bytes(self.owner), durable=durable)

    def _beat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._guard:
                if self._released:
                    return
                try:
                    self._beat()
                except OSError as error:  # run deleted with force, disk full: keep trying
                    logger.debug("heartbeat of run %s not written: %s", self.run.name, error)

    def release(self) -> None:
        """Stop the heartbeat, remove ``owner.json``, unlock. Safe to call more than once."""
        with self._guard:
            if self._released:
                return
            self._released = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        try:
            self._folder.unlink("owner.json")  # while still locked: never someone else's
        except OSError:
            pass
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._folder.close()
        _WRITERS.discard(self)
        if self.run.writer is self:
            self.run.writer = None
        logger.debug("released the writer lock of run %s", self.run.name)

    def _forget(self) -> None:
        """In a forked child: close our copies, leave the parent's lock alone."""
        self._released = True
        self._stop = threading.Event()
        for fd in (self._lock_fd, self._folder.fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._lock_fd = None
        self._folder.fd = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
