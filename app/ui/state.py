"""Process-wide state of the dashboard: the job registry, the run store, loaded models.

Everything here is created once per server process (``st.cache_resource``) and shared by
every browser tab, so a second tab or a reload sees the same jobs and runs.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from mist_core import checkpoints
from mist_core.experiment import ExperimentConfig, LandmarkExperiment, PreparedImages, preset
from mist_core.jobs import Job, JobRegistry
from mist_core.runs import Run, RunInfo, RunStatus, RunStore

from . import labels

__all__ = [
    "DEFAULT_PRESET",
    "PREPARED",
    "RUNS_DIR",
    "WARM_UP",
    "attach",
    "current_job",
    "default_config",
    "devices",
    "interrupted_runs",
    "latest_step",
    "list_runs",
    "load_experiment",
    "metrics_csv",
    "pick_trained_model",
    "registry",
    "run_label",
    "runs_with_checkpoint",
    "runs_with_results",
    "store",
    "train_curves",
    "warm_up",
]

logger = logging.getLogger(__name__)

#: Where runs are written; ``MIST_RUNS_DIR`` overrides (tests use a temporary folder).
RUNS_DIR = Path(os.environ.get("MIST_RUNS_DIR", "runs"))
#: The demo a person gets by pressing Start without changing anything.
DEFAULT_PRESET = os.environ.get("MIST_DEFAULT_PRESET", "demo-cpu")
#: Draw the default demo's faces when the server starts (tests switch it off: MIST_WARM_UP=0).
WARM_UP = os.environ.get("MIST_WARM_UP", "1") != "0"

#: Images drawn ahead of time, shared by every registry of this process: the warm-up can
#: start before Streamlit runs any page (``app/serve.py``, which ``make app`` uses).
PREPARED = PreparedImages()
_warm_up_lock = threading.Lock()
_warm_up_started = False


def warm_up() -> threading.Thread | None:
    """Start drawing the default demo's faces in the background, once per process, so that
    Start begins training at once. Returns the thread when this call started it; a no-op
    with ``MIST_WARM_UP=0``."""
    global _warm_up_started
    with _warm_up_lock:
        if _warm_up_started or not WARM_UP:
            return None
        _warm_up_started = True
    thread = threading.Thread(
        target=_prepare_default, args=(default_config(),), name="mist-warm-up", daemon=True
    )
    thread.start()
    return thread


def _prepare_default(config: ExperimentConfig) -> None:
    try:
        PREPARED.prepare(config)
    except Exception:  # noqa: BLE001 - a failed warm-up only means the job does the work
        logger.exception("could not prepare the default demo's images ahead of time")


@st.cache_resource(show_spinner=False)
def registry() -> JobRegistry:
    """The job registry of this server process (every tab and page shares it)."""
    warm_up()
    return JobRegistry(checkpoints.run_store(RUNS_DIR), prepared=PREPARED)


def store() -> RunStore:
    return registry().store


def default_config() -> ExperimentConfig:
    return preset(DEFAULT_PRESET)


def devices() -> list[str]:
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return found


def current_job() -> Job | None:
    """The job named in the URL (``?job=...``), if this server knows it."""
    job_id = st.query_params.get("job")
    if not job_id:
        return None
    try:
        return registry().get(job_id)
    except KeyError:
        return None


def attach(job: Job) -> None:
    """Put the job's id in the URL, so a reload or a copied link comes back to it."""
    st.query_params["job"] = job.id


def list_runs() -> list[RunInfo]:
    """The store's runs, newest first; ``[]`` (and the reason logged) when the folder
    itself cannot be read, so that a page never shows a traceback."""
    try:
        return store().list()
    except Exception:  # noqa: BLE001 - RunStore.list reports broken runs itself
        logger.exception("could not list the runs in %s", RUNS_DIR)
        return []


def interrupted_runs(infos: list[RunInfo] | None = None) -> list[RunInfo]:
    """Runs whose training process died (status ``interrupted``), newest first."""
    infos = list_runs() if infos is None else infos
    return [i for i in infos if i.problem is None and i.status is RunStatus.INTERRUPTED]


def runs_with_results(infos: list[RunInfo] | None = None) -> list[RunInfo]:
    """Runs (of ``infos``, default: the store's list) that finished with an MI table,
    newest first."""
    infos = list_runs() if infos is None else infos
    return [
        info for info in infos if info.problem is None and info.summary and info.summary.get("mi")
    ]


#: Runs whose training has ended (or died): their checkpoints are not being written.
_SETTLED = (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.INTERRUPTED)


def runs_with_checkpoint() -> list[RunInfo]:
    """Runs with a model to draw posteriors from: finished, stopped or interrupted, newest
    first (a run whose checkpoint pointer cannot be read is left out, and logged)."""
    out = []
    for info in list_runs():
        if info.problem is not None or info.status not in _SETTLED:
            continue
        try:
            if store().open(info.name).latest_checkpoint_step() is not None:
                out.append(info)
        except Exception as error:  # noqa: BLE001 - a broken run must not break the page
            logger.warning("run %s: cannot read its checkpoints: %s", info.name, error)
    return out


def run_label(info: RunInfo) -> str:
    config = info.config
    what = ""
    if config is not None:
        encoders = ", ".join(labels.encoder_short(e) for e in config.encoders)
        what = f" · {config.dataset} · {encoders}"
    status = info.status.value if info.status else "?"
    if info.status is RunStatus.INTERRUPTED:
        status = "interrupted: its training process died"
    return f"{info.name} ({status}){what}"


@functools.lru_cache(maxsize=2)
def _metrics_csv(path: str, mtime_ns: int, size: int) -> bytes:
    """One version of a run's metrics as CSV bytes (the key changes when the file does)."""
    return Run(path).read_metrics().to_csv(index=False).encode()


def metrics_csv(run_name: str) -> bytes:
    """A run's metrics as CSV bytes, for a download: made when it is asked for, then kept
    for that version of ``metrics.csv`` (its path, modification time and size are the key;
    the two most recent are kept, ~40 bytes a row). Not ``st.cache_data``: a download's
    callable runs outside any script run."""
    run = store().open(run_name)
    version = run.metrics_version()
    if version is None:  # no metrics yet: the header alone
        return run.read_metrics().to_csv(index=False).encode()
    return _metrics_csv(str(run.path), *version)


#: The most points a finished run's curve keeps for the Results page (evenly spaced, the
#: last one kept); a long run logs one point per step.
MAX_CURVE_POINTS = 2000


@st.cache_data(show_spinner=False, max_entries=256)
def _train_curves(path: str, mtime_ns: int, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One version of a run's training curves (the key changes when metrics.csv does)."""
    frame = Run(path).read_metrics()
    frame = frame[frame["split"] == "train"]
    curves = {}
    for name, part in frame.groupby("name", sort=False):
        steps = part["step"].to_numpy()
        values = part["value"].to_numpy(dtype=float)
        if len(steps) > MAX_CURVE_POINTS:
            keep = np.unique(np.linspace(0, len(steps) - 1, MAX_CURVE_POINTS).round().astype(int))
            steps, values = steps[keep], values[keep]
        curves[str(name)] = (steps, values)
    return curves


def train_curves(run_name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A run's per-batch training curves by name (``"I(encoder;landmark)"``, ``"loss"``):
    ``(steps, values)``, at most :data:`MAX_CURVE_POINTS` each; read once per version of its
    ``metrics.csv``. ``{}`` when it has none or they cannot be read (logged)."""
    try:
        run = store().open(run_name)
        version = run.metrics_version()
        if version is None:
            return {}
        return _train_curves(str(run.path), *version)
    except Exception as error:  # noqa: BLE001 - a broken run must not break the page
        logger.warning("run %s: cannot read its training curves: %s", run_name, error)
        return {}


@st.cache_resource(show_spinner=False, max_entries=3)
def load_experiment(run_name: str, checkpoint_step: int | None) -> LandmarkExperiment:
    """A run's trained model, loaded once per (run, checkpoint) and kept in memory."""
    run = store().open(run_name)
    which = "latest" if checkpoint_step is None else checkpoint_step
    return checkpoints.load_experiment(run, which)


def latest_step(run_name: str) -> int | None:
    """The step of the run's latest checkpoint (a cache key: a resumed run reloads)."""
    return store().open(run_name).latest_checkpoint_step()


def pick_trained_model(
    runs: list[RunInfo], key: str
) -> tuple[RunInfo, int | None, LandmarkExperiment]:
    """A selectbox of ``runs`` and the chosen run's model, loaded once; a run whose model
    cannot be loaded shows the reason and stops the page (never a traceback)."""
    info = st.selectbox("Trained model (run)", runs, format_func=run_label, key=key)
    try:
        step = latest_step(info.name)
        with st.spinner("Loading the trained model…"):
            experiment = load_experiment(info.name, step)
    except Exception as error:  # noqa: BLE001 - a broken run must not break the page
        st.error(f"This run's model could not be loaded: {error}")
        st.stop()
    return info, step, experiment
