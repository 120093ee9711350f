"""Run directories: where a training job keeps its config, status, metrics, summary, checkpoints.

A :class:`RunStore` is a folder of runs (``runs/`` by default); each run is one folder::

    runs/20250101-120000-3fa2c1/
        config.json       the ExperimentConfig, written once at creation
        status.json       {"status", "message", "traceback", "updated", "created"}
        metrics.csv       long form: step,epoch,split,name,value (appended, fsynced)
        summary.json      results: {"mi": [rows], "steps", "epochs", ...} (optional)
        .lock             the writer lock (``fcntl.flock``), held while a process trains
        owner.json        {"pid", "host", "started", "heartbeat"} of that process
        checkpoints/
            step-00000100.safetensors   model state (no pickle)
            step-00000100.optim.pt      optimizer state (loaded with weights_only=True only)
            step-00000100.json          step, epoch, extra, sizes and sha256 of both files
            latest.json                 {"step", "files"}: replaced last, atomically

Writing. Every file is written to a temporary file in the same folder, fsynced and then
renamed over the target, so a process killed at any moment leaves either the old or the new
content and ``latest.json`` never points at a missing or partial checkpoint. A new run is
assembled in a hidden folder and renamed into place, so it appears with its config, status
(and lock) at once. Everything a run writes gets one mode: ``0644`` for files and ``0755`` for
folders, less the umask.

One writer per run. A training process holds the run's writer lock
(:meth:`Run.acquire_writer`) and keeps ``owner.json``'s heartbeat fresh; a second writer, in
this process or another, gets :class:`RunBusyError`. A run whose recorded status is queued,
running or stopping while no live process holds it (killed, crashed machine) lists as
:attr:`RunStatus.INTERRUPTED`: it can be resumed or deleted.

Reading. Run names are validated and resolved inside the store, so a name (or a symlink)
never reaches outside it. Inside a run, files and ``checkpoints/`` are opened relative to the
run's folder without following symbolic links, only regular files are read, and each kind of
file has a size limit; what does not pass raises :class:`RunFileError` (a ``ValueError``)
naming the file. Listing never raises for a broken entry: it comes back as a :class:`RunInfo`
with ``problem`` saying what is wrong.

Readers (a dashboard) may read while the writer writes.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import safetensors.torch
import torch
from torch import Tensor

from mist_core.experiment import ExperimentConfig

try:  # POSIX; elsewhere the heartbeat alone tells whether a run's owner is alive
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_JSON_BYTES",
    "MAX_METRICS_BYTES",
    "Checkpoint",
    "CorruptCheckpointError",
    "Run",
    "RunBusyError",
    "RunFileError",
    "RunInfo",
    "RunStatus",
    "RunStore",
    "RunWriter",
]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("step", "epoch", "split", "name", "value")
_HEADER = ",".join(METRIC_COLUMNS) + "\n"
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_META_RE = re.compile(r"step-(\d{8,})\.json")
_STEP_FILE_RE = re.compile(r"step-(\d{8,})\.")
#: Temporary files older than this (seconds) in checkpoints/ are leftovers of killed writers.
_STALE_TMP_S = 60.0
#: Hidden folders of creations/deletions older than this (seconds) are leftovers of kills.
_STALE_LEFTOVER_S = 600.0
_TAIL_BYTES = 8192

#: Largest JSON file of a run that is read (config, status, summary, owner, checkpoint JSON).
MAX_JSON_BYTES = 16 * 2**20
#: Largest ``metrics.csv`` read whole (``list`` reads only its last 8 KB, whatever its size).
MAX_METRICS_BYTES = 512 * 2**20
#: Largest checkpoint file (model or optimizer state) read.
MAX_CHECKPOINT_BYTES = 16 * 2**30

#: Seconds between two heartbeats of a run's writer (``owner.json``).
HEARTBEAT_S = 5.0
#: A writer on another host whose heartbeat is older than this (seconds) is taken for gone.
STALE_HEARTBEAT_S = 60.0
#: How long :meth:`Run.acquire_writer` retries a lock that a reader probes at that moment.
_ACQUIRE_RETRY_S = 0.25

_FILE_MODE = 0o644
_DIR_MODE = 0o755
_HOST = socket.gethostname()

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as a run file never blocks
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FD = {os.open, os.stat, os.unlink, os.rename, os.mkdir} <= os.supports_dir_fd


class RunStatus(StrEnum):
    """Where a run is in its life (a ``str``: ``RunStatus.RUNNING == "running"``).

    ``STOPPING``: a stop was asked and the job is finishing its step. ``INTERRUPTED`` is
    derived, never written: the recorded status is queued, running or stopping but no live
    process owns the run (it was killed); such a run can be resumed or deleted.
    """

    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


_ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.STOPPING)


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file does not match its recorded hash, or cannot be loaded safely."""


class RunFileError(ValueError):
    """A run file that cannot be used: a symlink, not a regular file, larger than its limit,
    not UTF-8, not valid JSON or not of the expected shape. The message starts with the file's
    path inside the run (``"summary.json: ..."``)."""


class RunBusyError(RuntimeError):
    """Another live process (or another writer in this process) holds the run's writer lock.

    ``owner`` is that writer's ``owner.json`` (``pid``, ``host``, ``started``, ``heartbeat``)
    when it could be read, else ``None``.
    """

    def __init__(self, message: str, owner: dict | None = None) -> None:
        super().__init__(message)
        self.owner = owner


@dataclass(frozen=True)
class RunInfo:
    """One entry of :meth:`RunStore.list`. ``problem`` says why a field could not be read
    (several problems are joined with ``"; "``); the fields that could be read are set.

    ``status`` is the effective status (:meth:`Run.effective_status`): ``INTERRUPTED`` for a
    run whose owner is gone. ``last_step`` is the step of the last complete row of
    ``metrics.csv``. ``owner`` is the live writer's ``owner.json`` (``pid``, ``host``,
    ``started``, ``heartbeat``), ``None`` when no process writes the run.
    """

    name: str
    path: Path
    status: RunStatus | None
    created: float | None
    config: ExperimentConfig | None
    summary: dict | None
    problem: str | None
    last_step: int | None
    owner: dict | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: tensors on the CPU, ready for ``load_state_dict``."""

    model_state: dict[str, Tensor] = field(repr=False)
    optimizer_state: dict | None = field(repr=False)
    step: int
    epoch: int
    extra: dict


# --- modes ---------------------------------------------------------------------------------


def _umask() -> int:
    """The process's umask, read without changing it where the system says it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The one mode of every file a run writes: 0644 less the umask."""
    return _FILE_MODE & ~_umask()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


# --- folders opened without following links ------------------------------------------------


class _Dir:
    """An open folder of a run. Its files are opened relative to it with ``O_NOFOLLOW``, so
    a symbolic link planted as a run file (or as ``checkpoints/``) is refused, never followed;
    only regular files are read, each up to a size limit.

    ``label`` is the folder's path inside the run (``""`` or ``"checkpoints/"``), for messages.
    Without ``dir_fd`` support (Windows) paths are checked with ``lstat`` before use instead.
    """

    def __init__(self, path: Path, fd: int | None, label: str) -> None:
        self.path = path
        self.fd = fd
        self.label = label

    @classmethod
    def open(cls, path: str | Path, label: str = "") -> _Dir:
        """The folder ``path`` itself (the run's folder: a link to it is the store's business)."""
        path = Path(path)
        if not _DIR_FD:
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is not a folder")
            return cls(path, None, label)
        try:
            fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist") from None
        except NotADirectoryError:
            raise FileNotFoundError(f"{path} is not a folder") from None
        return cls(path, fd, label)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> _Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse(self, name: str, error: OSError, *, folder: bool = False) -> Exception:
        """The error to raise for ``name`` that could not be opened as it should."""
        where = f"{self.label}{name}"
        try:
            info = self.lstat(name)
        except OSError:
            info = None
        if isinstance(error, FileNotFoundError) or error.errno == errno.ENOENT:
            return FileNotFoundError(
                errno.ENOENT, f"{where} does not exist", str(self.path / name)
            )
        if info is not None and stat.S_ISLNK(info.st_mode):
            return RunFileError(
                f"{where}{'/' if folder else ''} is a symbolic link; run files are never read "
                "or written through links (replace it by the real file or folder)"
            )
        if info is not None and folder and not stat.S_ISDIR(info.st_mode):
            return RunFileError(f"{where} is not a folder")
        if info is not None and not folder and stat.S_ISDIR(info.st_mode):
            return RunFileError(f"{where} is a folder, not a file")
        return error

    def lstat(self, name: str) -> os.stat_result:
        if self.fd is None:
            return os.lstat(self.path / name)
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def sub(self, name: str, *, create: bool = False) -> _Dir:
        """The subfolder ``name``, refused when it is a link or not a folder."""
        label = f"{self.label}{name}/"
        if create:
            try:
                if self.fd is None:
                    os.mkdir(self.path / name, _DIR_MODE)
                else:
                    os.mkdir(name, _DIR_MODE, dir_fd=self.fd)
            except FileExistsError:
                pass
        if self.fd is None:
            info = os.lstat(self.path / name)  # FileNotFoundError passes through
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
                raise self._refuse(name, NotADirectoryError(name), folder=True)
            return _Dir(self.path / name, None, label)
        try:
            fd = os.open(
                name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self.fd
            )
        except OSError as error:
            raise self._refuse(name, error, folder=True) from None
        return _Dir(self.path / name, fd, label)

    def open_file(self, name: str, flags: int, mode: int = _FILE_MODE) -> int:
        """A file descriptor of ``name`` (never through a link); the caller closes it."""
        flags |= _O_NOFOLLOW | _O_CLOEXEC
        try:
            if self.fd is None:
                if os.path.islink(self.path / name):
                    raise OSError(errno.ELOOP, "symbolic link", str(self.path / name))
                return os.open(self.path / name, flags, mode)
            return os.open(name, flags, mode, dir_fd=self.fd)
        except OSError as error:
            raise self._refuse(name, error) from None

    def read(self, name: str, limit: int) -> bytes:
        """The bytes of the regular file ``name``; :class:`RunFileError` when it is larger
        than ``limit`` (checked before reading), a link, a folder or another kind of file."""
        fd = self.open_file(name, os.O_RDONLY | _O_NONBLOCK)
        try:
            info = os.fstat(fd)
            self._check_regular(name, info)
            self._check_size(name, info.st_size, limit)
            parts, total = [], 0
            while True:  # st_size bytes, in one read for anything under 2 GB
                chunk = os.read(fd, max(info.st_size - total, 0) or 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                self._check_size(name, total, limit)  # it grows while we read: still capped
                parts.append(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def _check_regular(self, name: str, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise RunFileError(f"{self.label}{name} is {kind}, not a file that can be read")

    def _check_size(self, name: str, size: int, limit: int) -> None:
        if size > limit:
            raise RunFileError(
                f"{self.label}{name} is {_size(size)} ({size:,} bytes), over the limit of "
                f"{limit:,} bytes for such a file; it is not read (a damaged or foreign file?)"
            )

    def read_json(self, name: str, limit: int = MAX_JSON_BYTES) -> Any:
        return _parse_json(self.read(name, limit), f"{self.label}{name}")

    def tail(self, name: str, size: int) -> bytes:
        """The last ``size`` bytes of the regular file ``name``, whatever its length."""
        fd = self.open_file(name, os.O_RDONLY | _O_NONBLOCK)
        try:
            info = os.fstat(fd)
            self._check_regular(name, info)
            os.lseek(fd, max(0, info.st_size - size), os.SEEK_SET)
            return os.read(fd, size)
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes, *, durable: bool = True) -> None:
        """Replace ``name`` by ``data``: a temporary file in this folder (mode 0644 less the
        umask), fsync, rename. A reader (or a process restarted after a kill) sees either the
        old file or the new one, never a mix; the folder is fsynced so the rename survives a
        power cut. The rename replaces a link named ``name``, never what it points to."""
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.fchmod(fd, _file_mode())
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.fd is None:
                os.replace(self.path / tmp, self.path / name)
            else:
                os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise
        if durable:
            self.fsync()

    def fsync(self) -> None:
        """Make renames in this folder durable, where the platform allows it."""
        if self.fd is None:
            _fsync_dir(self.path)
            return
        try:
            os.fsync(self.fd)
        except OSError:
            pass

    def unlink(self, name: str) -> None:
        """Remove ``name`` (a link is removed itself, never what it points to)."""
        if self.fd is None:
            os.unlink(self.path / name)
        else:
            os.unlink(name, dir_fd=self.fd)

    def listdir(self) -> list[str]:
        return os.listdir(self.path if self.fd is None else self.fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows, or a filesystem that refuses to open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_json(data: bytes, where: str) -> Any:
    """The JSON in ``data``; :class:`RunFileError` naming ``where`` when it is not."""
    if not data.strip():
        raise RunFileError(f"{where} is empty (a write that never finished?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RunFileError(
            f"{where} is not UTF-8 text (byte {error.start}: {error.reason}); a damaged file?"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFileError(
            f"{where} is not valid JSON ({error.msg} at line {error.lineno} column "
            f"{error.colno}); a truncated or damaged file?"
        ) from None
    except (ValueError, RecursionError) as error:  # 5000-digit numbers, [[[[...]]]]
        raise RunFileError(f"{where} cannot be read as JSON ({error})") from None


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays, 0-d tensors and paths in summaries and extras."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- shapes of run files -------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    """A plausible Unix time (seconds): finite, after 1970, before the year 5000."""
    return _is_number(value) and math.isfinite(value) and 0 <= value < 95e9


def _check_summary(data: Any) -> dict:
    """``data`` as a summary: an object whose known keys have their types.

    ``mi``: a list of rows with str ``encoder`` and ``landmark`` (each pair once) and number
    ``mi`` and ``std_error`` (NaN allowed, not infinite); ``steps``/``epochs``: non-negative
    ints; ``train_seconds``: a finite number; ``environment``: an object of strings. Other
    keys are free-form.
    """
    where = "summary.json"
    if not isinstance(data, dict):
        raise RunFileError(f"{where} is {_json_type(data)}, not a JSON object")
    if "mi" in data:
        rows = data["mi"]
        if not isinstance(rows, list):
            raise RunFileError(f"{where}: 'mi' must be a list of rows, got {_json_type(rows)}")
        seen: set[tuple[str, str]] = set()
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RunFileError(f"{where}: mi[{i}] must be an object, got {_json_type(row)}")
            for key in ("encoder", "landmark"):
                if not isinstance(row.get(key), str):
                    got = _show(row[key]) if key in row else "nothing"
                    raise RunFileError(f"{where}: mi[{i}].{key} must be a string, got {got}")
            for key in ("mi", "std_error"):
                value = row.get(key)
                if not _is_number(value) or math.isinf(value):
                    got = _show(value) if key in row else "nothing"
                    raise RunFileError(
                        f"{where}: mi[{i}].{key} must be a number (NaN allowed), got {got}"
                    )
            pair = (row["encoder"], row["landmark"])
            if pair in seen:
                raise RunFileError(f"{where}: mi has two rows for {pair[0]} and {pair[1]}")
            seen.add(pair)
    for key in ("steps", "epochs"):
        if key in data and not (_is_int(data[key]) and data[key] >= 0):
            raise RunFileError(
                f"{where}: '{key}' must be a non-negative integer, got {_show(data[key])}"
            )
    if "train_seconds" in data:
        value = data["train_seconds"]
        if not _is_number(value) or not math.isfinite(value):
            raise RunFileError(f"{where}: 'train_seconds' must be a number, got {_show(value)}")
    if "environment" in data:
        env = data["environment"]
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise RunFileError(f"{where}: 'environment' must be an object of strings")
    return data


def _check_status(data: Any) -> dict:
    where = "status.json"
    if not isinstance(data, dict) or "status" not in data:
        raise RunFileError(f"{where} is not an object with a 'status' field")
    try:
        RunStatus(data["status"])
    except ValueError:
        raise RunFileError(
            f"{where} has unknown status {_show(data['status'])}; "
            f"valid: {', '.join(s.value for s in RunStatus)}"
        ) from None
    for key in ("message", "traceback"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise RunFileError(f"{where}: '{key}' must be a string, got {_show(data[key])}")
    return data


def _check_owner(data: Any) -> dict:
    where = "owner.json"
    if not isinstance(data, dict):
        raise RunFileError(f"{where} is {_json_type(data)}, not a JSON object")
    if not (_is_int(data.get("pid")) and data["pid"] > 0):
        raise RunFileError(
            f"{where}: 'pid' must be a positive integer, got {_show(data.get('pid'))}"
        )
    if not isinstance(data.get("host"), str):
        raise RunFileError(f"{where}: 'host' must be a string, got {_show(data.get('host'))}")
    for key in ("started", "heartbeat"):
        if not _is_time(data.get(key)):
            raise RunFileError(
                f"{where}: '{key}' must be a time in seconds, got {_show(data.get(key))}"
            )
    return data


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


# --- names ---------------------------------------------------------------------------------


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("."):
        raise ValueError(
            f"invalid run name {name!r}: use 1-100 characters among A-Z a-z 0-9 . _ - "
            "and do not start with '.'"
        )
    return name


def _default_name() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _shorten(names: list[str], limit: int = 10) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


# --- metrics -------------------------------------------------------------------------------


def _metric_rows(rows: pd.DataFrame | Iterable[tuple]) -> list[tuple[int, int, str, str, float]]:
    if isinstance(rows, pd.DataFrame):
        missing = [c for c in METRIC_COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(
                f"metrics DataFrame lacks column(s) {missing}; needs {list(METRIC_COLUMNS)}"
            )
        rows = rows[list(METRIC_COLUMNS)].itertuples(index=False, name=None)
    out = []
    for row in rows:
        row = tuple(row)
        if len(row) != 5:
            raise ValueError(f"a metric row is (step, epoch, split, name, value), got {row!r}")
        step, epoch, split, name, value = row
        out.append((int(step), int(epoch), str(split), str(name), float(value)))
    return out


def _complete_text(data: bytes) -> str:
    """The text up to the last newline: a line torn by a kill is dropped."""
    end = data.rfind(b"\n")
    if end < len(data) - 1:
        # a writer may be mid-append right now: not worth a warning
        logger.debug("metrics.csv ends in an incomplete line (%d bytes)", len(data) - end - 1)
    return data[: end + 1].decode("utf-8", errors="replace")


def _parse_metrics(text: str) -> pd.DataFrame:
    empty = pd.DataFrame(
        {
            "step": pd.Series(dtype="int64"),
            "epoch": pd.Series(dtype="int64"),
            "split": pd.Series(dtype="str"),
            "name": pd.Series(dtype="str"),
            "value": pd.Series(dtype="float64"),
        }
    )
    if not text.strip():
        return empty
    frame = pd.read_csv(
        io.StringIO(text),
        header=None,
        names=list(METRIC_COLUMNS),
        dtype=str,
        keep_default_na=False,
        on_bad_lines="skip",
    )
    step = pd.to_numeric(frame["step"], errors="coerce")
    epoch = pd.to_numeric(frame["epoch"], errors="coerce")
    # drops the header and any garbled row (non-integral or absurd steps included)
    good = step.notna() & epoch.notna()
    good &= (step % 1 == 0) & (epoch % 1 == 0) & (step.abs() < 2**62) & (epoch.abs() < 2**62)
    bad = int((~good).sum()) - int((frame["step"] == "step").sum())
    if bad > 0:
        logger.warning("metrics.csv: %d unparseable row(s) ignored", bad)
    if not good.any():
        return empty
    return pd.DataFrame(
        {
            "step": step[good].astype("int64").to_numpy(),
            "epoch": epoch[good].astype("int64").to_numpy(),
            "split": frame.loc[good, "split"].astype(str).to_numpy(),
            "name": frame.loc[good, "name"].astype(str).to_numpy(),
            "value": pd.to_numeric(frame.loc[good, "value"], errors="coerce")
            .astype("float64")
            .to_numpy(),
        }
    )


def _last_step_of(tail: bytes) -> int | None:
    """The step of the last complete row in the end of a metrics file."""
    lines = tail[: tail.rfind(b"\n") + 1].splitlines()
    for line in reversed(lines):
        first = line.split(b",", 1)[0].strip()
        if first.isdigit() and len(first) < 19:
            return int(first)
    return None


# --- checkpoints ---------------------------------------------------------------------------


def _stem(step: int) -> str:
    return f"step-{step:08d}"


def _model_bytes(model_state: Mapping[str, Tensor]) -> bytes:
    tensors = {}
    storages: set[int] = set()
    for key, value in model_state.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"model_state[{key!r}] is a {type(value).__name__}; only tensors can be "
                "saved (put other values in extra)"
            )
        value = value.detach()
        storage = value.untyped_storage().data_ptr() if value.device.type == "cpu" else None
        if storage is None or storage in storages or not _whole_storage(value):
            # safetensors refuses shared storage (tied weights, views): those get a copy.
            # Tensors that own their CPU storage are written as they are: no copy, and no
            # parallel copy kernel in a background writer thread (see mist_core.jobs).
            value = value.to("cpu", copy=True).contiguous()
        else:
            storages.add(storage)
        tensors[str(key)] = value
    return safetensors.torch.save(tensors)


def _whole_storage(tensor: Tensor) -> bool:
    """Whether ``tensor`` is contiguous and spans its whole storage (no view of a bigger one)."""
    return (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    )


def _optimizer_bytes(optimizer_state: Mapping) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(optimizer_state), buffer)
    return buffer.getvalue()


# --- the writer lock -----------------------------------------------------------------------

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


# --- runs ----------------------------------------------------------------------------------


class Run:
    """One run directory. See the module docstring for its layout.

    Attributes:
        name: the folder name.
        path: the folder.
        keep_checkpoints: how many checkpoints to keep (the newest by step; never the one
            ``latest.json`` points to).
        writer: the :class:`RunWriter` this object acquired (``None`` when it holds none).
    """

    def __init__(self, path: str | Path, *, keep_checkpoints: int = 3) -> None:
        self.path = Path(path)
        self.name = self.path.name
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        self.keep_checkpoints = keep_checkpoints
        self.writer: RunWriter | None = None
        self._config: ExperimentConfig | None = None

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
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def _dir(self) -> _Dir:
        return _Dir.open(self.path)

    def _checkpoints(self, *, create: bool = False) -> _Dir:
        """``checkpoints/``, opened without following a link (``RunFileError`` if one)."""
        with self._dir() as folder:
            return folder.sub("checkpoints", create=create)

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

    def config(self) -> ExperimentConfig:
        """The config the run was created with.

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
                config = ExperimentConfig.from_dict(data)
                if "precision" not in data:
                    # written before the field existed: those runs' encoders ran in float32
                    config = config.replace(precision="float32")
            except Exception as error:  # noqa: BLE001 - ValueError, TypeError of bad fields
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

    # --- checkpoints -------------------------------------------------------------------

    def save_checkpoint(
        self,
        model_state: Mapping[str, Tensor],
        *,
        step: int,
        epoch: int,
        optimizer_state: Mapping | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint and point ``latest.json`` at it; returns its JSON file.

        Order: model (safetensors), optimizer (``torch.save``), the checkpoint JSON with both
        sizes and sha256s, then ``latest.json`` -- each atomically -- then old checkpoints
        are pruned. A ``checkpoints`` link is refused (``RunFileError``), never written into.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"epoch must be an int, got {epoch!r}")
        extra = dict(extra or {})
        extra_json = json.loads(json.dumps(extra, default=_json_default))  # fail early
        stem = _stem(step)
        model_name = f"{stem}.safetensors"
        optim_name = f"{stem}.optim.pt" if optimizer_state is not None else None
        with self._checkpoints(create=True) as directory:
            meta_name = f"{stem}.json"
            if self._exists(directory, meta_name):
                # re-saving a step: never leave old metadata over new files
                if self._pointer_step(directory) == step:
                    self._remove(directory, "latest.json")
                directory.unlink(meta_name)
                directory.fsync()

            model_data = _model_bytes(model_state)
            directory.write_atomic(model_name, model_data)
            hashes = {"model": _sha256(model_data), "optimizer": None}
            sizes = {"model": len(model_data), "optimizer": None}
            del model_data
            if optim_name is not None:
                assert optimizer_state is not None
                optim_data = _optimizer_bytes(optimizer_state)
                directory.write_atomic(optim_name, optim_data)
                hashes["optimizer"] = _sha256(optim_data)
                sizes["optimizer"] = len(optim_data)
                del optim_data
            else:
                self._remove(directory, f"{stem}.optim.pt")
            files = {"model": model_name, "optimizer": optim_name}
            meta = {
                "step": step,
                "epoch": epoch,
                "extra": extra_json,
                "files": files,
                "sha256": hashes,
                "bytes": sizes,
                "saved": time.time(),
            }
            directory.write_atomic(meta_name, _json_bytes(meta))
            pointer = {"step": step, "files": {"meta": meta_name, **files}}
            directory.write_atomic("latest.json", _json_bytes(pointer))
            self._prune(directory, keep_step=step)
        return self.checkpoint_dir / meta_name

    @staticmethod
    def _exists(directory: _Dir, name: str) -> bool:
        try:
            directory.lstat(name)
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _remove(directory: _Dir, name: str) -> None:
        try:
            directory.unlink(name)
        except FileNotFoundError:
            pass

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint was written (not verified: :meth:`load_checkpoint` does).

        Raises:
            RunFileError: ``checkpoints`` is a link or not a folder.
        """
        return bool(self._checkpoint_steps())

    def latest_checkpoint_step(self) -> int | None:
        """The step of the latest checkpoint (as ``latest.json`` says, else the newest file);
        ``None`` without one. Cheap: nothing is loaded or verified.

        Raises:
            RunFileError: ``checkpoints`` is a link or not a folder.
        """
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            return None
        with directory:
            step = self._pointer_step(directory)
            if step is not None:
                return step
            steps = self._steps_in(directory)
        return steps[-1] if steps else None

    def checkpoint_problem(self) -> str | None:
        """What is wrong with ``checkpoints/`` or its ``latest.json`` (cheap, nothing is
        verified), or ``None``. Loading falls back to the newest checkpoint that verifies."""
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            return str(error)
        with directory:
            try:
                self._pointer_step(directory, strict=True)
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as error:
                return f"{error} (loading falls back to the newest checkpoint that verifies)"
        return None

    def load_checkpoint(self, which: str | int = "latest") -> Checkpoint:
        """Load and verify a checkpoint: ``"latest"`` or a step number.

        Raises:
            CorruptCheckpointError: a file does not match its size or sha256, is not a valid
                safetensors file, needs unsafe unpickling, or cannot be read safely (a link,
                not a regular file, over :data:`MAX_CHECKPOINT_BYTES`); or ``checkpoints`` is
                a link.
            FileNotFoundError: there is no such checkpoint (or none loads).
        """
        if isinstance(which, str) and which != "latest":
            if not which.isdigit():
                raise ValueError(f"which must be 'latest' or a step number, got {which!r}")
            which = int(which)
        if not (which == "latest" or (isinstance(which, int) and not isinstance(which, bool))):
            raise ValueError(f"which must be 'latest' or a step number, got {which!r}")
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}") from None
        except RunFileError as error:
            raise CorruptCheckpointError(f"run {self.name!r}: {error}") from error
        with directory:
            if isinstance(which, int):
                return self._load_step(directory, which)
            step = self._pointer_step(directory)
            if step is not None:
                return self._load_step(directory, step)
            # latest.json missing or unusable: the newest checkpoint that verifies
            failures = []
            for step in sorted(self._steps_in(directory), reverse=True):
                try:
                    checkpoint = self._load_step(directory, step)
                except (CorruptCheckpointError, FileNotFoundError) as error:
                    logger.warning("skipping checkpoint %d of run %s: %s", step, self.name, error)
                    failures.append(f"step {step}: {error}")
                    continue
                logger.warning(
                    "run %s: latest.json missing or invalid; using checkpoint of step %d",
                    self.name,
                    step,
                )
                return checkpoint
        detail = f" that loads ({'; '.join(failures)})" if failures else ""
        raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}{detail}")

    def _pointer_step(self, directory: _Dir, *, strict: bool = False) -> int | None:
        """The step ``latest.json`` points to when it is valid and its JSON exists; else
        ``None`` with a warning, or with ``strict`` the error (FileNotFoundError: none)."""
        try:
            data = directory.read_json("latest.json")
            step = data.get("step") if isinstance(data, dict) else None
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise RunFileError("checkpoints/latest.json has no valid step")
            try:
                info = directory.lstat(f"{_stem(step)}.json")
            except FileNotFoundError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode):
                raise RunFileError(
                    f"checkpoints/latest.json points to checkpoint {step}, which is missing"
                )
        except FileNotFoundError:
            if strict:
                raise
            return None
        except (OSError, ValueError) as error:
            if strict:
                raise
            logger.warning("run %s: ignoring latest.json: %s", self.name, error)
            return None
        return step

    def _checkpoint_steps(self) -> list[int]:
        try:
            directory = self._checkpoints()
        except FileNotFoundError:
            return []
        with directory:
            return self._steps_in(directory)

    @staticmethod
    def _steps_in(directory: _Dir) -> list[int]:
        return sorted(int(m.group(1)) for n in directory.listdir() if (m := _META_RE.fullmatch(n)))

    def _load_step(self, directory: _Dir, step: int) -> Checkpoint:
        stem = _stem(step)
        meta_name = f"{stem}.json"
        meta_path = self.checkpoint_dir / meta_name
        try:
            meta = directory.read_json(meta_name)
        except FileNotFoundError:
            raise FileNotFoundError(f"no checkpoint of step {step} in {directory.path}") from None
        except ValueError as error:
            raise CorruptCheckpointError(f"run {self.name!r}: {error}") from error
        self._check_meta(meta, step, meta_path)

        model_name = meta["files"]["model"]
        model_data = self._verified_bytes(directory, meta, "model")
        try:
            model_state = safetensors.torch.load(model_data)
        except Exception as error:  # noqa: BLE001 - any parse failure is corruption
            raise CorruptCheckpointError(
                f"{directory.path / model_name} is not a valid safetensors file: {error}"
            ) from error
        del model_data

        optimizer_state = None
        if meta["files"]["optimizer"] is not None:
            optim_path = directory.path / meta["files"]["optimizer"]
            optim_data = self._verified_bytes(directory, meta, "optimizer")
            try:
                optimizer_state = torch.load(
                    io.BytesIO(optim_data), map_location="cpu", weights_only=True
                )
            except Exception as error:  # noqa: BLE001 - UnpicklingError and anything else
                raise CorruptCheckpointError(
                    f"refusing to load {optim_path}: it is not a plain tensor/optimizer "
                    f"state (weights_only unpickling failed: {error})"
                ) from error
            if not isinstance(optimizer_state, dict):
                raise CorruptCheckpointError(
                    f"{optim_path} holds a {type(optimizer_state).__name__}, not a state dict"
                )
        return Checkpoint(
            model_state=model_state,
            optimizer_state=optimizer_state,
            step=step,
            epoch=meta["epoch"],
            extra=meta["extra"],
        )

    @staticmethod
    def _check_meta(meta: Any, step: int, meta_path: Path) -> None:
        """The JSON names exactly this step's files: a model is never read from a pickle."""
        stem = _stem(step)
        try:
            files, hashes = meta["files"], meta["sha256"]
            sizes = meta.get("bytes")
            ok = (
                meta["step"] == step
                and isinstance(meta["epoch"], int)
                and not isinstance(meta["epoch"], bool)
                and isinstance(meta["extra"], dict)
                and files["model"] == f"{stem}.safetensors"
                and files["optimizer"] in (None, f"{stem}.optim.pt")
                and isinstance(hashes["model"], str)
                and (files["optimizer"] is None or isinstance(hashes["optimizer"], str))
                and (
                    sizes is None
                    or (
                        isinstance(sizes, dict)
                        and all(
                            sizes.get(k) is None or (_is_int(sizes[k]) and sizes[k] >= 0)
                            for k in ("model", "optimizer")
                        )
                    )
                )
            )
        except (TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise CorruptCheckpointError(
                f"{meta_path} is not a valid checkpoint description for step {step} "
                f"(expects files {stem}.safetensors and optionally {stem}.optim.pt)"
            )

    @staticmethod
    def _verified_bytes(directory: _Dir, meta: dict, kind: str) -> bytes:
        name = meta["files"][kind]
        path = directory.path / name
        expected_size = (meta.get("bytes") or {}).get(kind)
        try:
            if expected_size is not None:
                info = directory.lstat(name)
                if stat.S_ISREG(info.st_mode) and info.st_size != expected_size:
                    raise CorruptCheckpointError(
                        f"{path} is {info.st_size} bytes, its checkpoint says {expected_size} "
                        "(truncated or replaced)"
                    )
            data = directory.read(name, MAX_CHECKPOINT_BYTES)
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{path} is missing") from None
        except RunFileError as error:
            raise CorruptCheckpointError(f"{path}: {error}") from error
        if _sha256(data) != meta["sha256"][kind]:
            raise CorruptCheckpointError(f"{path} does not match its sha256 (corrupt file)")
        return data

    def _prune(self, directory: _Dir, keep_step: int) -> None:
        """Delete all but the newest checkpoints (and leftovers of killed writers). Works in
        the opened folder: a link is removed itself, nothing is deleted through one."""
        steps = self._steps_in(directory)
        keep = set(steps[-self.keep_checkpoints :]) | {keep_step}
        pointer = self._pointer_step(directory)
        if pointer is not None:
            keep.add(pointer)
        now = time.time()
        names = directory.listdir()
        # JSON first: a half-deleted checkpoint is then never taken for a valid one
        names.sort(key=lambda n: not n.endswith(".json"))
        for name in names:
            match = _STEP_FILE_RE.match(name)
            try:
                if match and int(match.group(1)) not in keep:
                    if stat.S_ISDIR(directory.lstat(name).st_mode):
                        logger.warning("not deleting folder %s", directory.path / name)
                        continue
                    directory.unlink(name)
                elif name.startswith(".") and name.endswith(".tmp"):
                    if now - directory.lstat(name).st_mtime > _STALE_TMP_S:
                        directory.unlink(name)
            except FileNotFoundError:
                pass
            except OSError as error:
                logger.warning("could not delete %s: %s", directory.path / name, error)


class RunStore:
    """A folder of run directories (created when the first run is)."""

    def __init__(self, root: str | Path = "runs", *, keep_checkpoints: int = 3) -> None:
        self.root = Path(root)
        self.keep_checkpoints = keep_checkpoints

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        """``root/name`` after checking the name and that it resolves to exactly that."""
        _check_name(name)
        root = self.root.resolve()
        path = self.root / name
        resolved = path.resolve()
        if not resolved.is_relative_to(root) or resolved != root / name:
            raise ValueError(
                f"run {name!r} resolves to {resolved}, outside {root} (a symlink?); refused"
            )
        return path

    def _run(self, path: Path) -> Run:
        return Run(path, keep_checkpoints=self.keep_checkpoints)

    def name_of(self, name_or_path: str | os.PathLike[str]) -> str:
        """The run name in a name or a path to a run folder of this store (``runs/NAME``,
        ``./runs/NAME/``, an absolute path: what tab completion gives).

        Raises:
            ValueError: an invalid name, or a folder that is not directly in this store.
        """
        text = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
        if not isinstance(text, str):
            return _check_name(text)
        if _NAME_RE.fullmatch(text) and not text.startswith("."):
            return text
        separators = [s for s in (os.sep, os.altsep, "/") if s]
        if not any(s in text for s in separators) or "\0" in text:
            return _check_name(text)
        path = Path(text).expanduser()
        parent = path.parent.resolve()
        root = self.root.resolve()
        if parent != root:
            raise ValueError(
                f"{text!r} is not a run folder of {self.root} (its folder is {parent}); give "
                f"a run name, or open the store of that folder (--run-dir {path.parent})"
            )
        return _check_name(path.name)

    def create(
        self, config: ExperimentConfig, name: str | None = None, *, acquire: bool = False
    ) -> Run:
        """A new run with ``config`` saved and status ``QUEUED``.

        The run is assembled in a hidden folder and renamed into place, so it never shows
        half-written. With ``acquire=True`` its writer lock is taken first (``run.writer``),
        so from its first appearance the run is owned and never lists as interrupted.

        Raises:
            ValueError: an invalid name (or one that would leave the store).
            FileExistsError: a run (or file) of that name exists.
        """
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        if name is not None:
            self._path(name)  # a bad name fails before anything is written
        self.root.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        self._clean_leftovers()
        staging = self.root / f".creating-{secrets.token_hex(8)}"
        os.mkdir(staging, _DIR_MODE)
        draft = self._run(staging)
        writer = None
        try:
            if acquire:
                writer = draft.acquire_writer()
            with draft._dir() as folder:
                folder.write_atomic("config.json", (config.to_json() + "\n").encode())
            draft.set_status(RunStatus.QUEUED)
            path = self._place(staging, name)
        except BaseException:
            if writer is not None:
                writer.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        run = self._run(path)
        run._config = config
        if writer is not None:
            writer.run = run
            run.writer = writer
        logger.info("created run %s", path)
        return run

    def _place(self, staging: Path, name: str | None) -> Path:
        """Rename ``staging`` to ``name`` (or a free time-stamped name) in the store."""
        for _ in range(20 if name is None else 1):
            path = self._path(name if name is not None else _default_name())
            if not os.path.lexists(path):
                try:
                    os.rename(staging, path)  # fails on a non-empty folder of that name
                    return path
                except OSError as error:
                    if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                        raise
            if name is not None:
                raise FileExistsError(f"run {name!r} already exists in {self.root}")
        raise FileExistsError(f"could not find a free run name in {self.root}")

    def _clean_leftovers(self) -> None:
        """Remove hidden staging/trash folders that a killed process left behind."""
        try:
            entries = os.listdir(self.root)
        except OSError:
            return
        now = time.time()
        for entry in entries:
            if not entry.startswith((".creating-", ".deleting-")):
                continue
            path = self.root / entry
            try:
                info = os.lstat(path)
                if stat.S_ISDIR(info.st_mode) and now - info.st_mtime > _STALE_LEFTOVER_S:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue

    def names(self) -> list[str]:
        """Names of the entries that could be runs (valid names), sorted."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if _NAME_RE.fullmatch(n) and not n.startswith("."))

    def open(self, name_or_path: str | os.PathLike[str]) -> Run:
        """An existing run, by name or by the path of its folder (see :meth:`name_of`).

        Raises:
            FileNotFoundError: no such run (the message names those available).
            ValueError: an invalid name, a link, or a folder outside this store.
        """
        name = self.name_of(name_or_path)
        path = self._path(name)
        if not path.is_dir():
            raise FileNotFoundError(
                f"no run {name!r} in {self.root}; available: {_shorten(self.names())}"
            )
        return self._run(path)

    def delete(self, name: str, *, force: bool = False) -> None:
        """Remove a run (or a broken entry of that name).

        A run that a live process writes (its writer lock is held) is refused
        (:class:`RunBusyError`, a ``RuntimeError``) unless ``force``; an interrupted run is
        deleted. A symlink is removed, not followed.
        """
        name = self.name_of(name)
        path = self.root / name
        if path.is_symlink():
            path.unlink()
            return
        path = self._path(name)
        if not path.exists():
            raise FileNotFoundError(
                f"no run {name!r} in {self.root}; available: {_shorten(self.names())}"
            )
        if not path.is_dir():
            path.unlink()
            return
        if not force:
            alive, owner = self._run(path)._liveness()
            if alive:
                raise RunBusyError(
                    _busy_message(name, owner).replace("stop it there first", "stop it first")
                    + "; or delete with force=True",
                    owner,
                )
        # rename away first, so a half-deleted run never shows up as a broken one
        trash = self.root / f".deleting-{name}-{secrets.token_hex(4)}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted run %s", path)

    def list(self) -> list[RunInfo]:
        """Every entry of the store, newest first. Never raises for a broken entry: it is
        listed with ``problem`` saying what is wrong (``status=None`` when the config or
        status cannot be read), and a warning is logged."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        except OSError as error:
            logger.warning("cannot list runs in %s: %s", self.root, error)
            return []
        infos = []
        for entry in entries:
            if entry.startswith("."):  # temporary/trash entries, never runs
                continue
            info = self._safe_info(entry)
            if info.problem is not None:
                logger.warning("run entry %s: %s", info.path, info.problem)
            infos.append(info)

        def newest_first(info: RunInfo) -> tuple[float, str]:
            return (info.created if info.created is not None else float("-inf"), info.name)

        return sorted(infos, key=newest_first, reverse=True)

    def info(self, name_or_path: str | os.PathLike[str]) -> RunInfo:
        """The :class:`RunInfo` of one run, as :meth:`list` gives it (never raises for a
        broken run; ``ValueError``/``FileNotFoundError`` for a bad or unknown name)."""
        name = self.name_of(name_or_path)
        if not os.path.lexists(self.root / name):
            raise FileNotFoundError(
                f"no run {name!r} in {self.root}; available: {_shorten(self.names())}"
            )
        return self._safe_info(name)

    def _safe_info(self, name: str) -> RunInfo:
        try:
            return self._info(name)
        except Exception as error:  # noqa: BLE001 - listing must never fail
            return RunInfo(name, self.root / name, None, None, None, None, str(error), None)

    def _info(self, name: str) -> RunInfo:
        path = self.root / name

        def broken(problem: str, created: float | None = None) -> RunInfo:
            return RunInfo(name, path, None, created, None, None, problem, None)

        if path.is_symlink():
            return broken("a symlink, not a run directory; not followed")
        if not _NAME_RE.fullmatch(name):
            return broken("not a valid run name")
        if not path.is_dir():
            return broken("not a run directory (a plain file)")
        run = self._run(path)
        created = run._created_fallback()
        try:
            config = run.config()
        except FileNotFoundError:
            return broken("config.json is missing (a half-created run?)", created)
        except Exception as error:  # noqa: BLE001 - RunFileError, or an OSError
            return broken(str(error), created)
        try:
            recorded = run.status_info()
        except FileNotFoundError:
            return RunInfo(name, path, None, created, config, None, "status.json is missing", None)
        except (OSError, ValueError) as error:
            return RunInfo(name, path, None, created, config, None, str(error), None)
        if _is_time(recorded.get("created")):
            created = float(recorded["created"])
        problems = []
        status = RunStatus(recorded["status"])
        alive, owner = run._liveness()
        if status in _ACTIVE and not alive:
            status = RunStatus.INTERRUPTED
        try:
            lock = os.lstat(run.lock_path)
            if not stat.S_ISREG(lock.st_mode):
                problems.append(".lock is not a regular file (a link?); the heartbeat decides")
        except FileNotFoundError:
            pass
        if os.path.lexists(run.owner_path) and owner is None:
            try:
                _check_owner(run._read_json("owner.json"))
            except (OSError, ValueError) as error:
                problems.append(str(error))
        try:
            summary = run.summary()
        except (OSError, ValueError) as error:
            summary = None
            problems.append(str(error))
        try:
            last_step = run.last_metric_step()
        except (OSError, ValueError) as error:
            last_step = None
            problems.append(
                f"metrics.csv: {error}" if "metrics.csv" not in str(error) else str(error)
            )
        checkpoint_problem = run.checkpoint_problem()
        if checkpoint_problem is not None:
            problems.append(checkpoint_problem)
        return RunInfo(
            name=name,
            path=path,
            status=status,
            created=created,
            config=config,
            summary=summary,
            problem="; ".join(problems) or None,
            last_step=last_step,
            owner=owner if alive else None,
        )
