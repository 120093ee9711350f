"""One run folder: :class:`Run`."""

from __future__ import annotations

import csv
import io
import logging
import os
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mist_core.runs._files import _O_NONBLOCK, _STALE_TMP_S, RunFileError, _Dir, _json_bytes
from mist_core.runs._shapes import (
    _ACTIVE,
    RunStatus,
    _check_owner,
    _check_status,
    _check_summary,
    _is_time,
    _json_type,
)
from mist_core.runs.checkpoint_files import _RunCheckpoints
from mist_core.runs.config_format import JSON_OBJECT, ConfigFormat
from mist_core.runs.lock import (
    _ACQUIRE_RETRY_S,
    _HOST,
    STALE_HEARTBEAT_S,
    RunBusyError,
    RunWriter,
    _busy_message,
)
from mist_core.runs.metrics import (
    _HEADER,
    _TAIL_BYTES,
    MAX_METRICS_BYTES,
    _complete_text,
    _last_step_of,
    _metric_rows,
    _parse_metrics,
)
from mist_core.runs.notes import MAX_NOTES_BYTES, RunNotes

try:  # POSIX; elsewhere the heartbeat alone tells whether a run's owner is alive
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("mist_core.runs")  # one logger for the whole package


class Run(_RunCheckpoints):
    """One run directory. See :mod:`mist_core.runs` for its layout; the checkpoint methods
    (:meth:`save_checkpoint`, :meth:`load_checkpoint`, ...) are in
    :mod:`mist_core.runs.checkpoint_files`.

    Attributes:
        name: the folder name.
        path: the folder.
        keep_checkpoints: how many checkpoints to keep (the newest by step; never the one
            ``latest.json`` points to).
        writer: the :class:`RunWriter` this object acquired (``None`` when it holds none).
        config_format: how :meth:`config` reads ``config.json`` (plain dicts by default).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        keep_checkpoints: int = 3,
        config_format: ConfigFormat = JSON_OBJECT,
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        self.keep_checkpoints = keep_checkpoints
        self.config_format = config_format
        self.writer: RunWriter | None = None
        self._config: Any = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # --- files -------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def owner_path(self) -> Path:
        return self.path / "owner.json"

    @property
    def notes_path(self) -> Path:
        return self.path / "notes.json"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def _dir(self) -> _Dir:
        return _Dir.open(self.path)

    def _read_json(self, name: str) -> Any:
        with self._dir() as folder:
            return folder.read_json(name)

    # --- writer lock and owner ---------------------------------------------------------

    def acquire_writer(self) -> RunWriter:
        """Take the run's writer lock (never waits): a :class:`RunWriter` that keeps
        ``owner.json`` fresh until released. Also ``self.writer``.

        Raises:
            RunBusyError: another process, or another writer in this process, holds it.
            RunFileError: ``.lock`` is a link or not a regular file.
        """
        folder = self._dir()
        try:
            fd = folder.open_file(".lock", os.O_RDWR | os.O_CREAT | _O_NONBLOCK)
        except BaseException:
            folder.close()
            raise
        try:
            folder._check_regular(".lock", os.fstat(fd))
            deadline = time.monotonic() + _ACQUIRE_RETRY_S
            while fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # a reader's probe holds it for microseconds; a writer holds it for good
                    if time.monotonic() > deadline:
                        owner = self._owner_file()
                        raise RunBusyError(_busy_message(self.name, owner), owner) from None
                    time.sleep(0.01)
            if fcntl is None:  # pragma: no cover - no flock: the heartbeat decides
                owner = self._owner_file()
                if owner is not None and self._alive(owner, None):
                    raise RunBusyError(_busy_message(self.name, owner), owner)
            self._remove_stale_tmp(folder)
            writer = RunWriter(self, fd, folder)
        except BaseException:
            os.close(fd)  # unlocks, if we had locked
            folder.close()
            raise
        self.writer = writer
        logger.debug("run %s: writer lock taken by process %d", self.name, os.getpid())
        return writer

    @staticmethod
    def _remove_stale_tmp(folder: _Dir) -> None:
        """Temporary files of killed writers (the lock is ours: no writer is alive)."""
        now = time.time()
        for name in folder.listdir():
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    if now - folder.lstat(name).st_mtime > _STALE_TMP_S:
                        folder.unlink(name)
                except OSError:
                    pass

    def _owner_file(self) -> dict | None:
        """``owner.json`` when it is there and valid, else ``None`` (never raises)."""
        try:
            return _check_owner(self._read_json("owner.json"))
        except (OSError, ValueError):
            return None

    def _lock_held(self) -> bool | None:
        """Whether a process holds the writer lock; ``None`` when that cannot be told."""
        if fcntl is None:  # pragma: no cover
            return None
        try:
            with self._dir() as folder:
                fd = folder.open_file(".lock", os.O_RDONLY | _O_NONBLOCK)
        except FileNotFoundError:
            return False  # never locked (a run written before locks existed)
        except (OSError, ValueError):
            return None  # a link or folder named .lock: the heartbeat decides
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError:  # a filesystem without flock
                return None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def _alive(self, owner: dict | None, held: bool | None) -> bool:
        """Whether the writer ``owner`` (or an unknown one) is alive. On this host the lock
        says; on another host (or without a usable lock) the heartbeat's age does."""
        if (owner is None or owner["host"] == _HOST) and held is not None:
            return held
        return owner is not None and time.time() - owner["heartbeat"] < STALE_HEARTBEAT_S

    def _liveness(self) -> tuple[bool, dict | None]:
        """``(alive, owner)``: whether a live process writes the run, and its owner.json."""
        owner = self._owner_file()
        local = owner is None or owner["host"] == _HOST
        held = self._lock_held() if local else None
        return self._alive(owner, held), owner

    def owner(self) -> dict | None:
        """The live writer's ``owner.json`` (``pid``, ``host``, ``started``, ``heartbeat``);
        ``None`` when no live process writes the run (none ever did, or it was killed)."""
        alive, owner = self._liveness()
        return owner if alive else None

    def check_not_busy(self) -> None:
        """Raise :class:`RunBusyError` when a live writer other than ``self.writer`` holds the
        run (another process, or another :class:`Run` object of this process)."""
        if self.writer is not None and self.writer.held:
            return
        alive, owner = self._liveness()
        if alive:
            raise RunBusyError(_busy_message(self.name, owner), owner)

    def effective_status(self) -> RunStatus:
        """The recorded status, or ``INTERRUPTED`` when it is queued/running/stopping while
        no live process holds the run (the lock is free on this host, or the heartbeat of a
        writer on another host is older than :data:`STALE_HEARTBEAT_S`)."""
        status = self.status()
        if status not in _ACTIVE:
            return status
        alive, _ = self._liveness()
        return status if alive else RunStatus.INTERRUPTED

    # --- config and status -------------------------------------------------------------

    def config(self) -> Any:
        """The config the run was created with, as :attr:`config_format` reads it.

        Raises:
            FileNotFoundError: no ``config.json``.
            RunFileError: it is not a valid config (the message says why).
        """
        if self._config is None:
            try:
                data = self._read_json("config.json")
            except FileNotFoundError:
                raise FileNotFoundError(f"run {self.name!r} has no config.json") from None
            if not isinstance(data, dict):
                raise RunFileError(f"config.json is {_json_type(data)}, not an object of fields")
            try:
                config = self.config_format.from_json(data)
            except Exception as error:  # noqa: BLE001 - whatever the format finds invalid
                raise RunFileError(f"config.json is not a valid config: {error}") from error
            self._config = config
        return self._config

    def status_info(self) -> dict[str, Any]:
        """``{"status", "message", "traceback", "updated", "created"}`` as last written.

        Raises:
            FileNotFoundError: no ``status.json``.
            RunFileError: it is unreadable or not of that shape.
        """
        try:
            data = self._read_json("status.json")
        except FileNotFoundError:
            raise FileNotFoundError(f"run {self.name!r} has no status.json") from None
        return _check_status(data)

    def status(self) -> RunStatus:
        """The recorded status (see :meth:`effective_status` for what lists show)."""
        return RunStatus(self.status_info()["status"])

    def set_status(
        self,
        status: RunStatus | str,
        message: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """Rewrite ``status.json`` atomically (keeps the creation time)."""
        status = RunStatus(status)
        if status is RunStatus.INTERRUPTED:
            raise ValueError("'interrupted' is derived from a run's owner, never written")
        created = None
        with self._dir() as folder:
            try:
                previous = folder.read_json("status.json")
                if isinstance(previous, dict):
                    created = previous.get("created")
            except (OSError, ValueError):
                pass
            if not _is_time(created):
                created = self._created_fallback()
            data = {
                "status": status.value,
                "message": message,
                "traceback": traceback,
                "updated": time.time(),
                "created": created,
            }
            folder.write_atomic("status.json", _json_bytes(data))

    def _created_fallback(self) -> float | None:
        for path in (self.config_path, self.path):
            try:
                return os.lstat(path).st_mtime
            except OSError:
                continue
        return None

    # --- summary -----------------------------------------------------------------------

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Replace ``summary.json`` (numpy scalars and 0-d tensors are converted)."""
        with self._dir() as folder:
            folder.write_atomic("summary.json", _json_bytes(dict(summary)))

    def summary(self) -> dict | None:
        """The summary, or ``None`` when none was written.

        Raises:
            RunFileError: unreadable, or a known key of the wrong shape (``mi`` rows with
                str ``encoder``/``landmark`` and number ``mi``/``std_error``; int ``steps``,
                ``epochs``; number ``train_seconds``; ``environment`` an object of strings).
        """
        try:
            data = self._read_json("summary.json")
        except FileNotFoundError:
            return None
        return _check_summary(data)

    # --- notes -------------------------------------------------------------------------

    def notes(self) -> RunNotes:
        """The person's note and tags on the run; an empty :class:`RunNotes` without
        ``notes.json``.

        Raises:
            RunFileError: ``notes.json`` is unreadable or not of its shape (the message names
                it and says why).
        """
        try:
            with self._dir() as folder:
                data = folder.read_json("notes.json", MAX_NOTES_BYTES)
        except FileNotFoundError:
            return RunNotes()
        return RunNotes.from_dict(data)

    def set_notes(self, note: str, tags: Iterable[str]) -> RunNotes:
        """Replace the run's note and tags (``notes.json``, atomically) and return them as
        stored: tags stripped, repeats removed, ``updated`` the time now.

        Notes are the user's: this takes no writer lock, so it works while a process trains
        the run and after it ended (whatever the status). Two writers at once: the last wins.

        Raises:
            ValueError: a note or tag that breaks :class:`RunNotes`'s rules (the message says
                what to do); nothing is written then.
        """
        notes = RunNotes(note, tags, time.time())
        with self._dir() as folder:
            folder.write_atomic("notes.json", _json_bytes(notes.to_dict()))
        logger.info("run %s: notes updated (%d tags)", self.name, len(notes.tags))
        return notes

    # --- metrics -----------------------------------------------------------------------

    def append_metrics(self, rows: pd.DataFrame | Iterable[tuple]) -> None:
        """Append rows ``(step, epoch, split, name, value)`` to ``metrics.csv``, durably.

        The file is opened, written, flushed and fsynced on every call, so rows appended
        before a kill stay. A line torn by an earlier kill is cut off before appending.
        """
        parsed = _metric_rows(rows)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(parsed)
        data = buffer.getvalue().encode()
        with self._dir() as folder:
            fd = folder.open_file("metrics.csv", os.O_RDWR | os.O_CREAT | os.O_APPEND)
            try:
                folder._check_regular("metrics.csv", os.fstat(fd))
            except BaseException:
                os.close(fd)
                raise
        with os.fdopen(fd, "a+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                data = _HEADER.encode() + data
            else:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._cut_torn_line(f, size)
            if not data:
                return
            f.write(data)  # append mode: always at the end
            f.flush()
            os.fsync(f.fileno())

    def _cut_torn_line(self, f: Any, size: int) -> None:
        start = size
        while start > 0:
            step = min(_TAIL_BYTES, start)
            f.seek(start - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start - step + newline + 1
                break
            start -= step
        else:
            keep = 0
        logger.warning(
            "%s ended in an incomplete line (%d bytes, left by a killed writer); removed",
            self.metrics_path,
            size - keep,
        )
        f.truncate(keep)
        if keep == 0:
            f.write(_HEADER.encode())

    def read_metrics(self) -> pd.DataFrame:
        """All complete metric rows; an empty frame with the columns when there are none.

        Raises:
            RunFileError: ``metrics.csv`` is a link, not a file, or over
                :data:`MAX_METRICS_BYTES`.
        """
        try:
            with self._dir() as folder:
                data = folder.read("metrics.csv", MAX_METRICS_BYTES)
        except FileNotFoundError:
            data = b""
        return _parse_metrics(_complete_text(data))

    def metrics_version(self) -> tuple[int, int] | None:
        """``(modification time in ns, size)`` of ``metrics.csv``, ``None`` without one:
        a cheap key for a cache of :meth:`read_metrics`."""
        try:
            info = os.lstat(self.metrics_path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def last_metric_step(self) -> int | None:
        """The step of the last complete row of ``metrics.csv``, reading only its end."""
        try:
            with self._dir() as folder:
                tail = folder.tail("metrics.csv", _TAIL_BYTES)
        except FileNotFoundError:
            return None
        return _last_step_of(tail)

    def truncate_metrics(self, after_step: int) -> None:
        """Keep only rows with ``step <= after_step`` (on resume, so no row is duplicated)."""
        if not os.path.lexists(self.metrics_path):
            return
        metrics = self.read_metrics()
        kept = metrics[metrics["step"] <= after_step]
        buffer = io.StringIO()
        buffer.write(_HEADER)
        csv.writer(buffer, lineterminator="\n").writerows(kept.itertuples(index=False, name=None))
        with self._dir() as folder:
            folder.write_atomic("metrics.csv", buffer.getvalue().encode())
