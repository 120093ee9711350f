"""Background training jobs: a landmark experiment trained in a worker thread.

A :class:`JobRegistry` (one per process) submits jobs, queues them so that at most one runs
per device, and finds them again by id. A :class:`Job` trains its experiment in a thread,
writes everything to its run directory (:mod:`mist_core.runs`) as it goes, and publishes an
immutable :class:`JobSnapshot` that a UI can poll. Stopping is cooperative and takes effect
after the current training step; an exception in the worker ends the job as failed with its
message and traceback, and never reaches the caller's thread. Nothing here knows about any
UI framework.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

import mist_core
from mist_core.data import FeatureCache
from mist_core.experiment import ExperimentConfig, LandmarkExperiment
from mist_core.runs import Run, RunStatus, RunStore
from mist_core.training import Progress, ResumeFrom, TrainState

__all__ = ["Job", "JobRegistry", "JobSnapshot", "JobState", "PreparedImages", "environment"]

logger = logging.getLogger(__name__)

#: A job's states are a run's states.
JobState = RunStatus
_ENDED = (RunStatus.STOPPED, RunStatus.FINISHED, RunStatus.FAILED)
#: The most points per curve a snapshot carries (older points are thinned evenly).
MAX_CURVE_POINTS = 2000
#: How often buffered metric rows are written to the run's metrics.csv.
FLUSH_EVERY_S = 1.0
#: How many prepared image sets a PreparedImages keeps in memory.
MAX_PREPARED_DATASETS = 2

Curves = Mapping[str, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class JobSnapshot:
    """An immutable copy of a job's progress, safe to read from any thread.

    ``train_curves`` / ``valid_curves`` map ``"I(encoder;landmark)"`` (and ``"loss"``) to
    ``((step, value), ...)``; ``mi_table`` is the final test-set table (rows of encoder,
    landmark, mi, std_error) once the job has finished.
    """

    id: str
    run_name: str | None
    state: RunStatus
    config: ExperimentConfig
    device: str
    epoch: int = 0
    step: int = 0
    total_steps: int | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    loss: float | None = None
    train_curves: Curves = field(default_factory=dict)
    valid_curves: Curves = field(default_factory=dict)
    mi_table: tuple[Mapping[str, object], ...] = ()
    message: str = ""
    error: str | None = None
    traceback: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.state in _ENDED

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 while the total is unknown)."""
        if not self.total_steps:
            return 1.0 if self.state is RunStatus.FINISHED else 0.0
        return min(1.0, self.step / self.total_steps)


def environment(device: torch.device | str) -> dict[str, str]:
    """Versions and hardware, for a run's summary."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "mist_core": mist_core.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name or platform.machine(),
        "threads": str(torch.get_num_threads()),
    }


def _lower_this_threads_priority() -> None:
    """Linux schedules threads separately: a nice writer thread leaves the cores to torch."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: write at normal priority
        pass


def _thin(points: list[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    if len(points) <= MAX_CURVE_POINTS:
        return tuple(points)
    stride = len(points) / MAX_CURVE_POINTS
    picked = [points[int(i * stride)] for i in range(MAX_CURVE_POINTS - 1)]
    return (*picked, points[-1])


class Job:
    """One experiment trained in a background thread. Create jobs with :class:`JobRegistry`."""

    def __init__(
        self,
        registry: JobRegistry,
        config: ExperimentConfig,
        *,
        run_name: str | None = None,
        resume: bool = False,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.config = config
        self._registry = registry
        self._resume = resume
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._device = (
            str(torch.device(config.device))
            if config.device != "auto"
            else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self._state = RunStatus.QUEUED
        self._run_name = run_name
        self._run: Run | None = None
        self._created = time.time()
        self._started: float | None = None
        self._finished: float | None = None
        self._progress: Progress | None = None
        self._first_step: tuple[int, float] | None = None
        self._curves: dict[str, dict[str, list[tuple[int, float]]]] = {"train": {}, "valid": {}}
        self._pending_rows: list[tuple[int, int, str, str, float]] = []
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._last_flush = 0.0
        self._mi_table: tuple[Mapping[str, object], ...] = ()
        self._message = "waiting for the device" if not resume else "waiting to resume"
        self._error: str | None = None
        self._traceback: str | None = None
        self._thread = threading.Thread(target=self._main, name=f"mist-job-{self.id}", daemon=True)

    # --- public ---------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self._device

    @property
    def run_name(self) -> str | None:
        return self._run_name

    def stop(self) -> None:
        """Ask the job to stop after its current step (it saves a checkpoint first)."""
        with self._lock:
            if self._state in _ENDED:
                return
            self._stop.set()
            if self._state is RunStatus.RUNNING:
                self._state = RunStatus.STOPPING
                self._message = "stopping after the current step"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended; True if it has."""
        return self._done.wait(timeout)

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            progress = self._progress
            rate = eta = None
            if progress is not None and self._first_step is not None:
                first_samples, first_time = self._first_step
                elapsed = progress.elapsed_s - first_time
                if elapsed > 0 and progress.samples > first_samples:
                    rate = (progress.samples - first_samples) / elapsed
                    steps_per_s = rate / self.config.batch_size
                    if progress.total_steps and steps_per_s > 0:
                        eta = max(0.0, (progress.total_steps - progress.step) / steps_per_s)
            return JobSnapshot(
                id=self.id,
                run_name=self._run_name,
                state=self._state,
                config=self.config,
                device=self._device,
                epoch=progress.epoch if progress else 0,
                step=progress.step if progress else 0,
                total_steps=progress.total_steps if progress else None,
                samples_per_s=rate,
                eta_s=eta,
                loss=progress.loss if progress and progress.split == "train" else None,
                train_curves=MappingProxyType(
                    {k: _thin(v) for k, v in self._curves["train"].items()}
                ),
                valid_curves=MappingProxyType(
                    {k: tuple(v) for k, v in self._curves["valid"].items()}
                ),
                mi_table=self._mi_table,
                message=self._message,
                error=self._error,
                traceback=self._traceback,
                created=self._created,
                started=self._started,
                finished=self._finished,
            )

    # --- worker ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._thread.start()

    def _set(self, state: RunStatus, message: str = "") -> None:
        with self._lock:
            self._state = state
            self._message = message
        if self._run is not None:
            try:
                self._run.set_status(state, message=message or None, traceback=self._traceback)
            except OSError as error:  # the UI still shows the state; the disk may be full
                logger.warning("could not write the status of run %s: %s", self._run_name, error)

    def _main(self) -> None:
        try:
            slot = self._registry._device_slot(self._device)
            while not slot.acquire(timeout=0.05):
                if self._stop.is_set():
                    with self._lock:
                        self._state, self._message = RunStatus.STOPPED, "cancelled while queued"
                        self._finished = time.time()
                    return
            try:
                self._train()
            finally:
                slot.release()
        except BaseException as error:  # noqa: BLE001 - a worker must never take the process down
            with self._lock:
                self._error = f"{type(error).__name__}: {error}"
                self._traceback = traceback.format_exc()
                self._finished = time.time()
            logger.error("job %s failed: %s", self.id, self._error)
            if self._writer is not None:
                self._writer.join()
            self._flush(force=True)
            self._set(RunStatus.FAILED, self._error)
        finally:
            self._registry._finished(self)
            self._done.set()

    def _train(self) -> None:
        store = self._registry.store
        if self._resume:
            assert self._run_name is not None
            self._run = store.open(self._run_name)
        else:
            self._run = store.create(self.config, self._run_name)
            with self._lock:
                self._run_name = self._run.name
        with self._lock:
            self._started = time.time()
        if self._stop.is_set():
            self._set(RunStatus.STOPPED, "stopped before it started")
            return
        self._set(RunStatus.RUNNING, "preparing the images and encoders")
        experiment = LandmarkExperiment(
            self.config,
            cache=self._registry.feature_cache,
            data=self._registry.prepared_data(self.config),
        )
        resume = self._resume_point(experiment) if self._resume else None
        experiment.frozen_fingerprints()
        experiment.datasets()
        self._set(RunStatus.RUNNING, "training")
        log = experiment.train(
            callback=self._on_progress,
            stop_event=self._stop,
            checkpoint=lambda state: self._checkpoint(experiment, state),
            resume=resume,
        )
        self._wait_for_writer()
        self._flush(force=True)
        steps = int(log.attrs.get("steps", 0))
        if log.attrs.get("stopped"):
            # A stop must be quick: the checkpoint is saved; evaluation can come later.
            with self._lock:
                self._finished = time.time()
            self._set(RunStatus.STOPPED, f"stopped at step {steps}; it can be resumed")
            return
        with self._lock:
            self._message = "evaluating on the test images"
        table = experiment.evaluate()
        assert self._run is not None
        self._run.write_summary(
            {
                "mi": table.to_dict("records"),
                "steps": steps,
                "epochs": int(log.attrs.get("epochs", 0)),
                "train_seconds": time.time() - (self._started or time.time()),
                "environment": environment(experiment.device),
            }
        )
        with self._lock:
            self._mi_table = tuple(MappingProxyType(r) for r in table.to_dict("records"))
            self._finished = time.time()
        self._set(RunStatus.FINISHED, "finished")

    def _resume_point(self, experiment: LandmarkExperiment) -> ResumeFrom:
        assert self._run is not None
        resume = experiment.restore(self._run)
        self._run.truncate_metrics(resume.step)  # rows after the checkpoint are redone
        metrics = self._run.read_metrics()
        with self._lock:  # show the curves so far
            for row in metrics.itertuples(index=False):
                self._curves[row.split].setdefault(row.name, []).append((row.step, row.value))
        return resume

    def _on_progress(self, progress: Progress) -> None:
        names = ({"loss": progress.loss} | progress.mi).items()
        rows = [(progress.step, progress.epoch, progress.split, n, v) for n, v in names]
        with self._lock:
            self._progress = progress
            if self._first_step is None and progress.split == "train":
                self._first_step = (progress.samples, progress.elapsed_s)
            curves = self._curves.setdefault(progress.split, {})
            for name, value in names:
                curves.setdefault(name, []).append((progress.step, value))
            self._pending_rows.extend(rows)
        self._flush()

    def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._run is None or (not force and now - self._last_flush < FLUSH_EVERY_S):
            return
        with self._lock:
            rows, self._pending_rows = self._pending_rows, []
        if rows:
            self._run.append_metrics(rows)
        self._last_flush = now

    def _checkpoint(self, experiment: LandmarkExperiment, state: TrainState) -> None:
        """Snapshot the state now (a copy, ~tens of ms) and write it in the background, so
        training goes on while ~100 MB reach the disk; a stop or the end waits for it."""
        assert self._run is not None
        if state.reason == "stopped":
            with self._lock:
                self._message = f"saving a checkpoint at step {state.step}"
        self._flush(force=True)  # metrics up to this step are on disk before the checkpoint
        model_state = {k: v.detach().clone() for k, v in experiment.checkpoint_state().items()}
        optimizer_state = copy.deepcopy(state.optimizer.state_dict())
        extra = {
            "batches_in_epoch": state.batches_in_epoch,
            "reason": state.reason,
            "frozen_fingerprints": experiment.frozen_fingerprints(),
        }
        self._wait_for_writer()  # one write at a time, in order
        run = self._run

        def write() -> None:
            _lower_this_threads_priority()  # training keeps the cores; the disk can wait
            try:
                run.save_checkpoint(
                    model_state,
                    step=state.step,
                    epoch=state.epoch,
                    optimizer_state=optimizer_state,
                    extra=extra,
                )
            except BaseException as error:  # noqa: BLE001 - re-raised in the job's thread
                self._writer_error = error

        self._writer = threading.Thread(target=write, name=f"mist-ckpt-{self.id}", daemon=True)
        self._writer.start()
        if state.reason != "epoch":
            self._wait_for_writer()

    def _wait_for_writer(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise RuntimeError(f"could not save a checkpoint: {error}") from error


class PreparedImages:
    """Images (and frozen features) drawn or loaded ahead of the jobs that will use them.

    Keeps the most recent few image sets in memory, keyed by what defines the images;
    several registries, or a warm-up started before any registry exists, can share one.
    Thread-safe: concurrent :meth:`prepare` calls for the same images do the work once.
    """

    def __init__(self, feature_cache: FeatureCache | None = None) -> None:
        self.feature_cache = feature_cache if feature_cache is not None else FeatureCache()
        self._lock = threading.Lock()
        self._data: OrderedDict[str, dict] = OrderedDict()
        self._ready: set[str] = set()
        self._data_locks: dict[str, threading.Lock] = {}

    @staticmethod
    def data_key(config: ExperimentConfig) -> str:
        """Identifies the images a config trains and tests on."""
        c = config
        root = str(Path(c.celeba_root).resolve()) if c.celeba_root else ""
        return json.dumps(
            [c.dataset, root, c.train_size, c.test_size, c.seed, list(c.image_size), c.preload]
        )

    def get(self, config: ExperimentConfig) -> dict | None:
        """The images of ``config`` if they were prepared, else ``None``; waits while
        another thread is preparing them."""
        key = self.data_key(config)
        with self._lock:
            lock = self._data_locks.get(key)
        if lock is None:
            return None
        with lock:  # a preparation in flight finishes first
            with self._lock:
                return self._data.get(key)

    def ready(self, config: ExperimentConfig) -> bool:
        """Whether ``config``'s images and features are ready (never waits)."""
        with self._lock:
            return self.data_key(config) in self._ready

    def prepare(self, config: ExperimentConfig) -> None:
        """Draw or load ``config``'s images and compute its frozen encoders' features now."""
        key = self.data_key(config)
        with self._lock:
            lock = self._data_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                data = self._data.get(key)
            experiment = LandmarkExperiment(config, cache=self.feature_cache, data=data)
            data = experiment.datasets()
            experiment.prepare(("train",))  # what training needs first
            with self._lock:
                self._data[key] = data
                self._data.move_to_end(key)
                self._ready.add(key)
                while len(self._data) > MAX_PREPARED_DATASETS:
                    old, _ = self._data.popitem(last=False)
                    self._data_locks.pop(old, None)
                    self._ready.discard(old)
        experiment.prepare(("test",))  # a waiting job may train meanwhile


class JobRegistry:
    """The process-wide set of jobs: submit, find, list, cancel, shut down.

    Args:
        store: the run store (or its root folder) every job writes to.
        feature_cache: shared by all jobs, so frozen features computed once are reused.
        prepared: images prepared ahead (see :meth:`prepare`); may be shared with a warm-up
            that started before this registry. Its feature cache wins over ``feature_cache``.

    At most one job runs per device; later ones wait in the ``queued`` state.
    """

    def __init__(
        self,
        store: RunStore | str | Path = "runs",
        feature_cache: FeatureCache | None = None,
        prepared: PreparedImages | None = None,
    ) -> None:
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self.prepared = prepared if prepared is not None else PreparedImages(feature_cache)
        self.feature_cache = self.prepared.feature_cache
        self._jobs: dict[str, Job] = {}
        self._slots: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def prepared_data(self, config: ExperimentConfig) -> dict | None:
        """The images of ``config`` if :meth:`prepare` (or an earlier job) made them, else
        ``None``; waits while another thread is preparing them."""
        return self.prepared.get(config)

    def is_prepared(self, config: ExperimentConfig) -> bool:
        """Whether ``config``'s images are ready in memory (never waits)."""
        return self.prepared.ready(config)

    def prepare(self, config: ExperimentConfig) -> None:
        """Draw or load ``config``'s images and compute its frozen encoders' features now, so
        that a job started later with the same data begins training at once. Thread-safe;
        concurrent calls for the same data do the work once."""
        self.prepared.prepare(config)

    def _device_slot(self, device: str) -> threading.Semaphore:
        with self._lock:
            return self._slots.setdefault(device, threading.Semaphore(1))

    def _finished(self, job: Job) -> None:
        logger.info("job %s ended: %s", job.id, job.snapshot().state.value)

    def submit(self, config: ExperimentConfig, run_name: str | None = None) -> Job:
        """Start (or queue) a new job that trains ``config`` into a new run."""
        job = Job(self, config, run_name=run_name)
        with self._lock:
            self._jobs[job.id] = job
        job._start()
        return job

    def resume(self, run_name: str, config: ExperimentConfig | None = None) -> Job:
        """Continue a stopped run from its last checkpoint, appending to its metrics.

        ``config`` may change where it runs (``device``), not what it trains."""
        run = self.store.open(run_name)
        if not run.has_checkpoint():
            raise ValueError(f"run {run_name!r} has no checkpoint to resume from")
        for job in self.jobs():
            if job.run_name == run_name and not job.snapshot().done:
                raise ValueError(f"run {run_name!r} is already being trained by job {job.id}")
        job = Job(self, config or run.config(), run_name=run_name, resume=True)
        with self._lock:
            self._jobs[job.id] = job
        job._start()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job {job_id!r}; known jobs: {', '.join(self._jobs) or 'none'}")
            return self._jobs[job_id]

    def jobs(self) -> list[Job]:
        """Every job of this process, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> None:
        self.get(job_id).stop()

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop every job; with ``wait``, return when they have ended (or after ``timeout``)."""
        jobs = self.jobs()
        for job in jobs:
            job.stop()
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            for job in jobs:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                job.wait(remaining)
