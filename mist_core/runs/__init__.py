"""Run directories: where a training job keeps its config, status, metrics, summary, checkpoints.

A :class:`RunStore` is a folder of runs (``runs/`` by default); each run is one folder::

    runs/20250101-120000-3fa2c1/
        config.json       the config (a JSON object; see ConfigFormat), written once at creation
        status.json       {"status", "message", "traceback", "updated", "created"}
        metrics.csv       long form: step,epoch,split,name,value (appended, fsynced)
        summary.json      results: {"mi": [rows], "steps", "epochs", ...} (optional)
        notes.json        a person's {"note", "tags", "updated"} (optional; see RunNotes)
        .lock             the writer lock (``fcntl.flock``), held while a process trains
        owner.json        {"pid", "host", "started", "heartbeat"} of that process
        checkpoints/
            step-00000100.safetensors   model state (no pickle)
            step-00000100.optim.pt      optimizer state (loaded with weights_only=True only)
            step-00000100.json          step, epoch, extra, sizes and sha256 of both files
            latest.json                 {"step", "files"}: replaced last, atomically

Writing. Every file is written to a temporary file in the same folder, fsynced and then
renamed over the target (:func:`write_atomic`, which mist's other caches use too), so a
process killed at any moment leaves either the old or the new content and ``latest.json``
never points at a missing or partial checkpoint. A new run is
assembled in a hidden folder and renamed into place, so it appears with its config, status
(and lock) at once. Everything a run writes gets one mode: ``0644`` for files and ``0755`` for
folders, less the umask.

One writer per run. A training process holds the run's writer lock
(:meth:`Run.acquire_writer`) and keeps ``owner.json``'s heartbeat fresh; a second writer, in
this process or another, gets :class:`RunBusyError`. A run whose recorded status is queued,
running or stopping while no live process holds it (killed, crashed machine) lists as
:attr:`RunStatus.INTERRUPTED`: it can be resumed or deleted.

Notes. ``notes.json`` is the person's, not the trainer's: :meth:`Run.set_notes` writes it
atomically without the writer lock, so a note can be added while a process trains the run,
or to any ended run.

Reading. Run names are validated and resolved inside the store, so a name (or a symlink)
never reaches outside it. Inside a run, files and ``checkpoints/`` are opened relative to the
run's folder without following symbolic links, only regular files are read, and each kind of
file has a size limit; what does not pass raises :class:`RunFileError` (a ``ValueError``)
naming the file. Listing never raises for a broken entry: it comes back as a :class:`RunInfo`
with ``problem`` saying what is wrong.

Readers (a dashboard) may read while the writer writes.

Configs. The store knows no config type: ``config.json`` is a JSON object, and the store's
:class:`ConfigFormat` turns it into the config :meth:`Run.config` returns (a plain dict by
default; :func:`mist_core.checkpoints.run_store` gives typed experiment configs). This package
imports nothing else from mist_core.
"""

from mist_core.runs._files import MAX_JSON_BYTES, RunFileError, write_atomic
from mist_core.runs._shapes import RunStatus
from mist_core.runs.checkpoint_files import (
    MAX_CHECKPOINT_BYTES,
    Checkpoint,
    CorruptCheckpointError,
)
from mist_core.runs.config_format import JSON_OBJECT, ConfigFormat
from mist_core.runs.lock import HEARTBEAT_S as HEARTBEAT_S
from mist_core.runs.lock import STALE_HEARTBEAT_S as STALE_HEARTBEAT_S
from mist_core.runs.lock import RunBusyError, RunWriter
from mist_core.runs.metrics import MAX_METRICS_BYTES
from mist_core.runs.metrics import METRIC_COLUMNS as METRIC_COLUMNS
from mist_core.runs.notes import MAX_NOTE_CHARS, MAX_TAG_CHARS, MAX_TAGS, RunNotes
from mist_core.runs.run import Run
from mist_core.runs.store import RunInfo, RunStore

__all__ = [
    "JSON_OBJECT",
    "MAX_CHECKPOINT_BYTES",
    "MAX_JSON_BYTES",
    "MAX_METRICS_BYTES",
    "MAX_NOTE_CHARS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "Checkpoint",
    "ConfigFormat",
    "CorruptCheckpointError",
    "Run",
    "RunBusyError",
    "RunFileError",
    "RunInfo",
    "RunNotes",
    "RunStatus",
    "RunStore",
    "RunWriter",
    "write_atomic",
]
