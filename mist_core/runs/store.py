"""A folder of runs: :class:`RunStore` and the :class:`RunInfo` of its entries."""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mist_core.runs._files import _DIR_MODE, _fsync_dir, _json_bytes
from mist_core.runs._shapes import _ACTIVE, RunStatus, _check_owner, _is_time
from mist_core.runs.config_format import JSON_OBJECT, ConfigFormat
from mist_core.runs.lock import RunBusyError, _busy_message
from mist_core.runs.notes import RunNotes
from mist_core.runs.run import Run

logger = logging.getLogger("mist_core.runs")  # one logger for the whole package

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: Hidden folders of creations/deletions older than this (seconds) are leftovers of kills.
_STALE_LEFTOVER_S = 600.0


@dataclass(frozen=True)
class RunInfo:
    """One entry of :meth:`RunStore.list`. ``problem`` says why a field could not be read
    (several problems are joined with ``"; "``); the fields that could be read are set.

    ``status`` is the effective status (:meth:`Run.effective_status`): ``INTERRUPTED`` for a
    run whose owner is gone. ``last_step`` is the step of the last complete row of
    ``metrics.csv``. ``owner`` is the live writer's ``owner.json`` (``pid``, ``host``,
    ``started``, ``heartbeat``), ``None`` when no process writes the run. ``config`` is as
    the store's config format reads it. ``note`` and ``tags`` are the person's notes on the
    run (:meth:`Run.notes`; empty when there are none or ``notes.json`` is unreadable, which
    is then one of the problems).
    """

    name: str
    path: Path
    status: RunStatus | None
    created: float | None
    config: Any
    summary: dict | None
    problem: str | None
    last_step: int | None
    owner: dict | None = None
    note: str = ""
    tags: tuple[str, ...] = ()


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


class RunStore:
    """A folder of run directories (created when the first run is).

    ``config_format`` says what a run's config is (:meth:`create` takes one, :meth:`Run.config`
    gives one back): plain dicts by default.
    """

    def __init__(
        self,
        root: str | Path = "runs",
        *,
        keep_checkpoints: int = 3,
        config_format: ConfigFormat = JSON_OBJECT,
    ) -> None:
        self.root = Path(root)
        self.keep_checkpoints = keep_checkpoints
        self.config_format = config_format

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
        return Run(path, keep_checkpoints=self.keep_checkpoints, config_format=self.config_format)

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

    def create(self, config: Any, name: str | None = None, *, acquire: bool = False) -> Run:
        """A new run with ``config`` (of the store's config format) saved and status ``QUEUED``.

        The run is assembled in a hidden folder and renamed into place, so it never shows
        half-written. With ``acquire=True`` its writer lock is taken first (``run.writer``),
        so from its first appearance the run is owned and never lists as interrupted.

        Raises:
            TypeError: ``config`` is not one of the store's config format.
            ValueError: an invalid name (or one that would leave the store).
            FileExistsError: a run (or file) of that name exists.
        """
        config_json = self.config_format.to_json(config)
        stored = self.config_format.from_json(config_json)  # what the run's config() gives
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
                folder.write_atomic("config.json", _json_bytes(config_json))
            draft.set_status(RunStatus.QUEUED)
            path = self._place(staging, name)
        except BaseException:
            if writer is not None:
                writer.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        run = self._run(path)
        run._config = stored
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

        def broken(problem: str) -> RunInfo:
            return RunInfo(name, path, None, None, None, None, problem, None)

        if path.is_symlink():
            return broken("a symlink, not a run directory; not followed")
        if not _NAME_RE.fullmatch(name):
            return broken("not a valid run name")
        if not path.is_dir():
            return broken("not a run directory (a plain file)")
        run = self._run(path)
        created = run._created_fallback()
        problems = []
        try:  # the person's notes show whatever else is wrong with the run
            notes = run.notes()
        except (OSError, ValueError) as error:
            notes = RunNotes()
            problems.append(str(error) if "notes.json" in str(error) else f"notes.json: {error}")

        def partial(problem: str, config: Any = None) -> RunInfo:
            return RunInfo(
                name,
                path,
                None,
                created,
                config,
                None,
                "; ".join([problem, *problems]),
                None,
                note=notes.note,
                tags=notes.tags,
            )

        try:
            config = run.config()
        except FileNotFoundError:
            return partial("config.json is missing (a half-created run?)")
        except Exception as error:  # noqa: BLE001 - RunFileError, or an OSError
            return partial(str(error))
        try:
            recorded = run.status_info()
        except FileNotFoundError:
            return partial("status.json is missing", config)
        except (OSError, ValueError) as error:
            return partial(str(error), config)
        if _is_time(recorded.get("created")):
            created = float(recorded["created"])
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
            note=notes.note,
            tags=notes.tags,
        )
