"""Run directories: where a training job keeps its config, status, metrics, summary, checkpoints.

A :class:`RunStore` is a folder of runs (``runs/`` by default); each run is one folder::

    runs/20250101-120000-3fa2c1/
        config.json       the ExperimentConfig, written once at creation
        status.json       {"status", "message", "traceback", "updated", "created"}
        metrics.csv       long form: step,epoch,split,name,value (appended, fsynced)
        summary.json      free-form results (optional)
        checkpoints/
            step-00000100.safetensors   model state (no pickle)
            step-00000100.optim.pt      optimizer state (loaded with weights_only=True only)
            step-00000100.json          step, epoch, extra and the sha256 of both files
            latest.json                 {"step", "files"}: replaced last, atomically

Every file is written to a temporary file in the same folder, fsynced and then renamed over
the target, so a process killed at any moment leaves either the old or the new content and
``latest.json`` never points at a missing or partial checkpoint. Run names are validated and
resolved inside the store, so a name (or a symlink) never reaches outside it. Listing tolerates
half-written or foreign entries: they come back as :class:`RunInfo` with ``problem`` set.

One process writes to a run at a time; readers (a dashboard) may read concurrently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
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

__all__ = [
    "Checkpoint",
    "CorruptCheckpointError",
    "Run",
    "RunInfo",
    "RunStatus",
    "RunStore",
]

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("step", "epoch", "split", "name", "value")
_HEADER = ",".join(METRIC_COLUMNS) + "\n"
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_META_RE = re.compile(r"step-(\d{8,})\.json")
_STEP_FILE_RE = re.compile(r"step-(\d{8,})\.")
#: Temporary files older than this (seconds) in checkpoints/ are leftovers of killed writers.
_STALE_TMP_S = 60.0
_TAIL_BYTES = 8192


class RunStatus(StrEnum):
    """Where a run is in its life (a ``str``: ``RunStatus.RUNNING == "running"``).

    ``STOPPING``: a stop was asked and the job is finishing its step.
    """

    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file does not match its recorded hash, or cannot be loaded safely."""


@dataclass(frozen=True)
class RunInfo:
    """One entry of :meth:`RunStore.list`. ``problem`` says why a field could not be read.

    ``last_step`` is the step of the last complete row of ``metrics.csv``.
    """

    name: str
    path: Path
    status: RunStatus | None
    created: float | None
    config: ExperimentConfig | None
    summary: dict | None
    problem: str | None
    last_step: int | None


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: tensors on the CPU, ready for ``load_state_dict``."""

    model_state: dict[str, Tensor] = field(repr=False)
    optimizer_state: dict | None = field(repr=False)
    step: int
    epoch: int
    extra: dict


# --- atomic files --------------------------------------------------------------------------


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


def _atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temp file in the same folder, fsync, ``os.replace``.

    A reader (or a process restarted after a kill) sees either the old file or the new one,
    never a mix. The folder is fsynced as well so the rename survives a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays, 0-d tensors and paths in summaries and extras."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; ``ValueError`` naming the file when it is not valid JSON."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path.name} is not valid JSON ({error})") from error


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    good = step.notna() & epoch.notna()  # drops the header and any garbled row
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


def _last_metric_step(path: Path) -> int | None:
    """The step of the last complete row of a metrics file, reading only its tail."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return None
    lines = tail[: tail.rfind(b"\n") + 1].splitlines()
    for line in reversed(lines):
        first = line.split(b",", 1)[0].strip()
        if first.isdigit():
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


class Run:
    """One run directory. See the module docstring for its layout.

    Attributes:
        name: the folder name.
        path: the folder.
        keep_checkpoints: how many checkpoints to keep (the newest by step; never the one
            ``latest.json`` points to).
    """

    def __init__(self, path: str | Path, *, keep_checkpoints: int = 3) -> None:
        self.path = Path(path)
        self.name = self.path.name
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        self.keep_checkpoints = keep_checkpoints
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
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    # --- config and status -------------------------------------------------------------

    def config(self) -> ExperimentConfig:
        """The config the run was created with (``ValueError`` when the file is invalid)."""
        if self._config is None:
            try:
                text = self.config_path.read_text()
            except FileNotFoundError:
                raise FileNotFoundError(f"run {self.name!r} has no config.json") from None
            config = ExperimentConfig.from_json(text)
            if "precision" not in json.loads(text):
                # written before the field existed: those runs' encoders ran in float32
                config = config.replace(precision="float32")
            self._config = config
        return self._config

    def status_info(self) -> dict[str, Any]:
        """``{"status", "message", "traceback", "updated", "created"}`` as last written."""
        try:
            data = _read_json(self.status_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"run {self.name!r} has no status.json") from None
        if not isinstance(data, dict) or "status" not in data:
            raise ValueError("status.json is not an object with a 'status' field")
        try:
            RunStatus(data["status"])
        except ValueError:
            raise ValueError(
                f"status.json has unknown status {data['status']!r}; "
                f"valid: {', '.join(s.value for s in RunStatus)}"
            ) from None
        return data

    def status(self) -> RunStatus:
        return RunStatus(self.status_info()["status"])

    def set_status(
        self,
        status: RunStatus | str,
        message: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """Rewrite ``status.json`` atomically (keeps the creation time)."""
        status = RunStatus(status)
        created = None
        try:
            previous = _read_json(self.status_path)
            if isinstance(previous, dict):
                created = previous.get("created")
        except (OSError, ValueError):
            pass
        if not isinstance(created, (int, float)):
            created = self._created_fallback()
        data = {
            "status": status.value,
            "message": message,
            "traceback": traceback,
            "updated": time.time(),
            "created": created,
        }
        _atomic_write_bytes(self.status_path, _json_bytes(data))

    def _created_fallback(self) -> float | None:
        for path in (self.config_path, self.path):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return None

    # --- summary -----------------------------------------------------------------------

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Replace ``summary.json`` (numpy scalars and 0-d tensors are converted)."""
        _atomic_write_bytes(self.summary_path, _json_bytes(dict(summary)))

    def summary(self) -> dict | None:
        """The summary, or ``None`` when none was written (``ValueError`` when invalid)."""
        try:
            data = _read_json(self.summary_path)
        except FileNotFoundError:
            return None
        if not isinstance(data, dict):
            raise ValueError("summary.json is not a JSON object")
        return data

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
        with open(self.metrics_path, "a+b") as f:
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
        """All complete metric rows; an empty frame with the columns when there are none."""
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            data = b""
        return _parse_metrics(_complete_text(data))

    def truncate_metrics(self, after_step: int) -> None:
        """Keep only rows with ``step <= after_step`` (on resume, so no row is duplicated)."""
        if not self.metrics_path.exists():
            return
        metrics = self.read_metrics()
        kept = metrics[metrics["step"] <= after_step]
        buffer = io.StringIO()
        buffer.write(_HEADER)
        csv.writer(buffer, lineterminator="\n").writerows(kept.itertuples(index=False, name=None))
        _atomic_write_bytes(self.metrics_path, buffer.getvalue().encode())

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
        sha256s, then ``latest.json`` -- each atomically -- then old checkpoints are pruned.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"epoch must be an int, got {epoch!r}")
        extra = dict(extra or {})
        extra_json = json.loads(json.dumps(extra, default=_json_default))  # fail early
        directory = self.checkpoint_dir
        directory.mkdir(parents=True, exist_ok=True)
        stem = _stem(step)
        model_name = f"{stem}.safetensors"
        optim_name = f"{stem}.optim.pt" if optimizer_state is not None else None
        meta_path = directory / f"{stem}.json"

        if meta_path.exists():  # re-saving a step: never leave old metadata over new files
            if self._pointer_step() == step:
                (directory / "latest.json").unlink(missing_ok=True)
            meta_path.unlink()
            _fsync_dir(directory)

        model_data = _model_bytes(model_state)
        _atomic_write_bytes(directory / model_name, model_data)
        hashes = {"model": _sha256(model_data), "optimizer": None}
        if optim_name is not None:
            assert optimizer_state is not None
            optim_data = _optimizer_bytes(optimizer_state)
            _atomic_write_bytes(directory / optim_name, optim_data)
            hashes["optimizer"] = _sha256(optim_data)
        else:
            (directory / f"{stem}.optim.pt").unlink(missing_ok=True)
        files = {"model": model_name, "optimizer": optim_name}
        meta = {
            "step": step,
            "epoch": epoch,
            "extra": extra_json,
            "files": files,
            "sha256": hashes,
            "saved": time.time(),
        }
        _atomic_write_bytes(meta_path, _json_bytes(meta))
        pointer = {"step": step, "files": {"meta": meta_path.name, **files}}
        _atomic_write_bytes(directory / "latest.json", _json_bytes(pointer))
        self._prune(keep_step=step)
        return meta_path

    def has_checkpoint(self) -> bool:
        """Whether any checkpoint was written (not verified: :meth:`load_checkpoint` does)."""
        return bool(self._checkpoint_steps())

    def latest_checkpoint_step(self) -> int | None:
        """The step of the latest checkpoint (as ``latest.json`` says, else the newest file);
        ``None`` without one. Cheap: nothing is loaded or verified."""
        step = self._pointer_step()
        if step is not None:
            return step
        steps = self._checkpoint_steps()
        return steps[-1] if steps else None

    def load_checkpoint(self, which: str | int = "latest") -> Checkpoint:
        """Load and verify a checkpoint: ``"latest"`` or a step number.

        Raises:
            CorruptCheckpointError: a file does not match its sha256, is not a valid
                safetensors file, or the optimizer file needs unsafe unpickling.
            FileNotFoundError: there is no such checkpoint (or none at all).
        """
        if isinstance(which, str) and which != "latest":
            if not which.isdigit():
                raise ValueError(f"which must be 'latest' or a step number, got {which!r}")
            which = int(which)
        if isinstance(which, int) and not isinstance(which, bool):
            return self._load_step(which)
        if which != "latest":
            raise ValueError(f"which must be 'latest' or a step number, got {which!r}")

        step = self._pointer_step()
        if step is not None:
            return self._load_step(step)
        # latest.json missing or unusable: the newest checkpoint that verifies
        for step in sorted(self._checkpoint_steps(), reverse=True):
            try:
                checkpoint = self._load_step(step)
            except (CorruptCheckpointError, FileNotFoundError) as error:
                logger.warning("skipping checkpoint %d of run %s: %s", step, self.name, error)
                continue
            logger.warning(
                "run %s: latest.json missing or invalid; using checkpoint of step %d",
                self.name,
                step,
            )
            return checkpoint
        raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}")

    def _pointer_step(self) -> int | None:
        """The step ``latest.json`` points to when it is valid and its JSON exists."""
        path = self.checkpoint_dir / "latest.json"
        try:
            data = _read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("run %s: ignoring latest.json: %s", self.name, error)
            return None
        step = data.get("step") if isinstance(data, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            logger.warning("run %s: latest.json has no valid step; ignored", self.name)
            return None
        if not (self.checkpoint_dir / f"{_stem(step)}.json").is_file():
            logger.warning(
                "run %s: latest.json points to missing checkpoint %d; ignored", self.name, step
            )
            return None
        return step

    def _checkpoint_steps(self) -> list[int]:
        try:
            names = os.listdir(self.checkpoint_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(m.group(1)) for n in names if (m := _META_RE.fullmatch(n)))

    def _load_step(self, step: int) -> Checkpoint:
        directory = self.checkpoint_dir
        stem = _stem(step)
        meta_path = directory / f"{stem}.json"
        try:
            meta = _read_json(meta_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no checkpoint of step {step} in {directory}") from None
        except ValueError as error:
            raise CorruptCheckpointError(f"{meta_path}: {error}") from error
        self._check_meta(meta, step, meta_path)

        model_path = directory / meta["files"]["model"]
        model_data = self._verified_bytes(model_path, meta["sha256"]["model"])
        try:
            model_state = safetensors.torch.load(model_data)
        except Exception as error:  # noqa: BLE001 - any parse failure is corruption
            raise CorruptCheckpointError(
                f"{model_path} is not a valid safetensors file: {error}"
            ) from error

        optimizer_state = None
        if meta["files"]["optimizer"] is not None:
            optim_path = directory / meta["files"]["optimizer"]
            optim_data = self._verified_bytes(optim_path, meta["sha256"]["optimizer"])
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
            ok = (
                meta["step"] == step
                and isinstance(meta["epoch"], int)
                and isinstance(meta["extra"], dict)
                and files["model"] == f"{stem}.safetensors"
                and files["optimizer"] in (None, f"{stem}.optim.pt")
                and isinstance(hashes["model"], str)
                and (files["optimizer"] is None or isinstance(hashes["optimizer"], str))
            )
        except (TypeError, KeyError):
            ok = False
        if not ok:
            raise CorruptCheckpointError(
                f"{meta_path} is not a valid checkpoint description for step {step} "
                f"(expects files {stem}.safetensors and optionally {stem}.optim.pt)"
            )

    @staticmethod
    def _verified_bytes(path: Path, expected: str) -> bytes:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{path} is missing") from None
        if _sha256(data) != expected:
            raise CorruptCheckpointError(f"{path} does not match its sha256 (corrupt file)")
        return data

    def _prune(self, keep_step: int) -> None:
        """Delete all but the newest checkpoints (and leftovers of killed writers)."""
        directory = self.checkpoint_dir
        steps = self._checkpoint_steps()
        keep = set(steps[-self.keep_checkpoints :]) | {keep_step}
        pointer = self._pointer_step()
        if pointer is not None:
            keep.add(pointer)
        now = time.time()
        names = os.listdir(directory)
        # JSON first: a half-deleted checkpoint is then never taken for a valid one
        names.sort(key=lambda n: not n.endswith(".json"))
        for name in names:
            path = directory / name
            match = _STEP_FILE_RE.match(name)
            try:
                if match and int(match.group(1)) not in keep:
                    path.unlink()
                elif name.startswith(".") and name.endswith(".tmp"):
                    if now - path.stat().st_mtime > _STALE_TMP_S:
                        path.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                logger.warning("could not delete %s: %s", path, error)


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

    def create(self, config: ExperimentConfig, name: str | None = None) -> Run:
        """A new run with ``config`` saved and status ``QUEUED``.

        Raises:
            ValueError: an invalid name (or one that would leave the store).
            FileExistsError: a run (or file) of that name exists.
        """
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        self.root.mkdir(parents=True, exist_ok=True)
        if name is None:
            for _ in range(20):
                path = self._path(_default_name())
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(f"could not find a free run name in {self.root}")
        else:
            path = self._path(name)
            try:
                path.mkdir()
            except FileExistsError:
                raise FileExistsError(f"run {name!r} already exists in {self.root}") from None
        run = self._run(path)
        _atomic_write_bytes(run.config_path, (config.to_json() + "\n").encode())
        run.set_status(RunStatus.QUEUED)
        run._config = config
        logger.info("created run %s", path)
        return run

    def names(self) -> list[str]:
        """Names of the entries that could be runs (valid names), sorted."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if _NAME_RE.fullmatch(n) and not n.startswith("."))

    def open(self, name: str) -> Run:
        """An existing run. ``FileNotFoundError`` (naming those available) when missing."""
        path = self._path(name)
        if not path.is_dir():
            raise FileNotFoundError(
                f"no run {name!r} in {self.root}; available: {_shorten(self.names())}"
            )
        return self._run(path)

    def delete(self, name: str, *, force: bool = False) -> None:
        """Remove a run (or a broken entry of that name).

        A run whose status is ``running`` or ``stopping`` is refused (``RuntimeError``)
        unless ``force``: its job may still be writing. A symlink is removed, not followed.
        """
        _check_name(name)
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
            try:
                status = self._run(path).status()
            except (OSError, ValueError):
                status = None
            if status in (RunStatus.RUNNING, RunStatus.STOPPING):
                raise RuntimeError(
                    f"run {name!r} is {status.value}; stop it first or pass force=True"
                )
        # rename away first, so a half-deleted run never shows up as a broken one
        trash = self.root / f".deleting-{name}-{secrets.token_hex(4)}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted run %s", path)

    def list(self) -> list[RunInfo]:
        """Every entry of the store, newest first. Never raises for a broken entry: it is
        listed with ``status=None`` (unless only the summary is unreadable) and ``problem``
        saying what is wrong, and a warning is logged."""
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
            try:
                info = self._info(entry)
            except Exception as error:  # noqa: BLE001 - listing must never fail
                info = RunInfo(entry, self.root / entry, None, None, None, None, str(error), None)
            if info.problem is not None:
                logger.warning("run entry %s: %s", info.path, info.problem)
            infos.append(info)

        def newest_first(info: RunInfo) -> tuple[float, str]:
            return (info.created if info.created is not None else float("-inf"), info.name)

        return sorted(infos, key=newest_first, reverse=True)

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
            return broken("missing config.json (half-created run?)", created)
        except Exception as error:  # noqa: BLE001 - ValueError, TypeError from bad fields
            return broken(f"invalid config.json: {error}", created)
        try:
            info = run.status_info()
        except FileNotFoundError:
            return RunInfo(name, path, None, created, config, None, "missing status.json", None)
        except (OSError, ValueError) as error:
            return RunInfo(
                name, path, None, created, config, None, f"invalid status.json: {error}", None
            )
        if isinstance(info.get("created"), (int, float)):
            created = float(info["created"])
        problem = None
        try:
            summary = run.summary()
        except (OSError, ValueError) as error:
            summary, problem = None, f"invalid summary.json: {error}"
        return RunInfo(
            name=name,
            path=path,
            status=RunStatus(info["status"]),
            created=created,
            config=config,
            summary=summary,
            problem=problem,
            last_step=_last_metric_step(run.metrics_path),
        )
