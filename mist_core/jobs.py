"""Background training jobs: a landmark experiment trained in a worker thread.

A :class:`JobRegistry` (one per process) submits jobs, queues them so that at most one runs
per device, and finds them again by id. A :class:`Job` trains its experiment in a thread,
writes everything to its run directory (:mod:`mist_core.runs`) as it goes, and publishes an
immutable :class:`JobSnapshot` that a UI can poll. Stopping is cooperative and takes effect
after the current training step (within about 2 s while the images are being prepared); an
exception in the worker ends the job as failed with its message and traceback, and never
reaches the caller's thread.

What is bounded: a job's thread exists only while it runs (queued jobs wait in a per-device
first-in first-out queue, and the next one starts when one ends); at most ``max_queued`` jobs
wait (:class:`QueueFullError` beyond); ended jobs are forgotten beyond ``keep_finished``
(their runs stay on disk). A job holds its run's writer lock (:meth:`mist_core.runs.Run.
acquire_writer`) from the moment its run exists until it has ended, so no other process
writes the same run; a job always ends as finished, stopped or failed, even when writing its
files fails on the way out. Nothing here knows about any UI framework.
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
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

import mist_core
from mist_core.data import FeatureCache
from mist_core.experiment import ExperimentConfig, LandmarkExperiment, PreparationStopped
from mist_core.resources import check_resources
from mist_core.runs import Run, RunBusyError, RunStatus, RunStore
from mist_core.training import Progress, ResumeFrom, TrainState

__all__ = [
    "DeviceBusyError",
    "Job",
    "JobRegistry",
    "JobSnapshot",
    "JobState",
    "PreparedImages",
    "QueueFullError",
    "device_key",
    "environment",
]

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
#: How often a thread waiting for something looks at its stop event.
_POLL_S = 0.1
#: Defaults of :class:`JobRegistry`: jobs waiting for a device; ended jobs remembered.
MAX_QUEUED = 8
KEEP_FINISHED = 20

Curves = Mapping[str, tuple[tuple[int, float], ...]]


class DeviceBusyError(RuntimeError):
    """``submit(..., exclusive=True)`` while a job is running or waiting on that device."""


class QueueFullError(RuntimeError):
    """``submit`` or ``resume`` while ``max_queued`` jobs are already waiting."""


def device_key(device: str) -> str:
    """The device a config's ``device`` trains on, as the registry queues jobs: ``"auto"``
    resolved (``"cuda:0"`` when CUDA is available, else ``"cpu"``), ``"cuda"`` as
    ``"cuda:0"``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):  # validated by ExperimentConfig anyway
        return str(device)
    if resolved.type == "cuda" and resolved.index is None:
        return "cuda:0"
    return str(resolved)


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
    """One experiment trained in a background thread. Create jobs with :class:`JobRegistry`.

    The thread exists only while the job runs: the registry starts it when the job's device
    is free. ``run``/``owner`` (a resumed run and its writer lock, taken by the registry)
    are held until the job has ended.
    """

    def __init__(
        self,
        registry: JobRegistry,
        config: ExperimentConfig,
        *,
        run_name: str | None = None,
        resume: bool = False,
        run: Run | None = None,
        owner: Any = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.config = config
        self._registry = registry
        self._resume = resume
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._device = device_key(config.device)
        self._state = RunStatus.QUEUED
        self._run_name = run.name if run is not None else run_name
        self._run: Run | None = run
        self._owner = owner  # the run's RunWriter (writer lock + heartbeat) while we hold it
        self._created = time.time()
        self._started: float | None = None
        self._finished: float | None = None
        self._training = False  # past the preparation: a stop then saves a checkpoint
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
        """Where it trains, as :func:`device_key` names it (``"cpu"``, ``"cuda:0"``...)."""
        return self._device

    @property
    def run_name(self) -> str | None:
        return self._run_name

    @property
    def done(self) -> bool:
        """Whether the job has ended and let go of its device and run (``wait`` returns)."""
        return self._done.is_set()

    def stop(self) -> None:
        """Ask the job to stop: a queued job is withdrawn at once; a preparing one stops
        within about 2 s; a training one after its current step (it saves a checkpoint)."""
        with self._lock:
            if self._state in _ENDED:
                return
            self._stop.set()
            if self._state is RunStatus.RUNNING:
                self._state = RunStatus.STOPPING
                self._message = "stopping after the current step" if self._training else "stopping"
        if self._registry._withdraw(self):  # it was still waiting: no thread to tell
            self._end_unstarted(RunStatus.STOPPED, "cancelled while queued")

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

    # --- life cycle -----------------------------------------------------------------------

    def _start(self) -> None:
        self._thread.start()

    def _set(self, state: RunStatus, message: str = "") -> None:
        """The state in memory first (it never fails), then in the run's status.json; a
        failed write is logged and said in the message."""
        with self._lock:
            self._state = state
            self._message = message
            if state in _ENDED and self._finished is None:
                self._finished = time.time()
        if self._run is None:
            return
        try:
            self._run.set_status(state, message=message or None, traceback=self._traceback)
        except Exception as error:  # noqa: BLE001 - the UI still shows the state; disk full?
            logger.warning("could not write the status of run %s: %s", self._run_name, error)
            with self._lock:
                self._message = (
                    f"{message} (the run's status could not be written: {error})"
                    if message
                    else f"the run's status could not be written: {error}"
                )

    def _end_unstarted(self, state: RunStatus, message: str) -> None:
        """End a job whose thread never ran (cancelled while queued, or no thread could be
        started). A resumed run's files are left as they were."""
        with self._lock:
            self._state, self._message = state, message
            self._finished = time.time()
        self._release_owner()
        try:
            self._registry._job_ended(self)
        finally:
            self._done.set()

    def _release_owner(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        try:
            owner.release()
        except Exception as error:  # noqa: BLE001 - the lock goes with the file anyway
            logger.warning(
                "could not release the writer lock of run %s: %s", self._run_name, error
            )

    def _main(self) -> None:
        try:
            try:
                self._train()
            except PreparationStopped:
                self._stopped_while_preparing()
        except BaseException as error:  # noqa: BLE001 - a worker must never take the process down
            self._fail(error, traceback.format_exc())
        finally:
            self._end()

    def _stopped_while_preparing(self) -> None:
        message = "stopped while preparing the images"
        if self._resume:
            message += "; it can be resumed"
        self._set(RunStatus.STOPPED, message)

    def _fail(self, error: BaseException, trace: str) -> None:
        """Record the failure; every file written on the way out may fail too, and is then
        named in the message instead."""
        with self._lock:
            self._error = f"{type(error).__name__}: {error}"
            self._traceback = trace
            self._finished = time.time()
        logger.error("job %s failed: %s", self.id, self._error)
        also = []
        try:
            self._wait_for_writer()
        except BaseException as late:  # noqa: BLE001 - reported below
            also.append(f"the last checkpoint could not be saved ({late})")
        try:
            self._flush(force=True)
        except BaseException as late:  # noqa: BLE001 - reported below
            logger.error("job %s: could not write its last metrics: %s", self.id, late)
            also.append(f"its last metrics could not be written ({late})")
        message = self._error if not also else f"{self._error}; also, {'; '.join(also)}"
        self._set(RunStatus.FAILED, message)

    def _end(self) -> None:
        """Whatever happened: an ended state in memory, the run's lock released (after its
        last status write), the device handed to the next job, waiters woken."""
        try:
            with self._lock:
                if self._state not in _ENDED:  # the failure path itself failed
                    self._state = RunStatus.FAILED
                    self._error = self._error or "the job ended unexpectedly"
                    self._message = self._error
                if self._finished is None:
                    self._finished = time.time()
            self._release_owner()
            self._registry._job_ended(self)
        except BaseException:  # noqa: BLE001 - waiters must be woken whatever happens
            logger.exception("job %s: error while ending", self.id)
        finally:
            self._done.set()

    # --- worker ---------------------------------------------------------------------------

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise PreparationStopped("stopped while preparing the images")

    def _train(self) -> None:
        if self._stop.is_set():  # stopped between leaving the queue and starting: no run
            self._set(RunStatus.STOPPED, "cancelled before it started")
            return
        store = self._registry.store
        if self._run is None:
            self._run = store.create(self.config, self._run_name, acquire=True)
            self._owner = self._run.writer
            with self._lock:
                self._run_name = self._run.name
        with self._lock:
            self._started = time.time()
        self._set(RunStatus.RUNNING, "preparing the images and encoders")
        self._check_stop()
        experiment = LandmarkExperiment(
            self.config,
            cache=self._registry.feature_cache,
            data=self._registry.prepared_data(self.config, stop_event=self._stop),
            stop_event=self._stop,
        )
        self._check_stop()
        resume = self._resume_point(experiment) if self._resume else None
        experiment.frozen_fingerprints()
        experiment.datasets()
        with self._lock:
            if self._stop.is_set():
                raise PreparationStopped("stopped while preparing the images")
            self._training = True  # from here a stop saves a checkpoint
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
        """Write the buffered metric rows; rows that could not be written stay buffered."""
        now = time.monotonic()
        if self._run is None or (not force and now - self._last_flush < FLUSH_EVERY_S):
            return
        with self._lock:
            rows, self._pending_rows = self._pending_rows, []
        if rows:
            try:
                self._run.append_metrics(rows)
            except BaseException:
                with self._lock:
                    self._pending_rows[:0] = rows
                raise
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

    Keeps the most recent few image sets in memory (``MAX_PREPARED_DATASETS``), keyed by
    what defines the images; several registries, or a warm-up started before any registry
    exists, can share one. Thread-safe: concurrent :meth:`prepare` calls for the same images
    do the work once.
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

    def get(
        self, config: ExperimentConfig, stop_event: threading.Event | None = None
    ) -> dict | None:
        """The images of ``config`` if they were prepared, else ``None``; waits while
        another thread is preparing them, unless ``stop_event`` is set meanwhile
        (:class:`~mist_core.experiment.PreparationStopped`, within ~0.1 s)."""
        key = self.data_key(config)
        with self._lock:
            lock = self._data_locks.get(key)
        if lock is None:
            return None
        while not lock.acquire(timeout=_POLL_S):  # a preparation in flight finishes first
            if stop_event is not None and stop_event.is_set():
                raise PreparationStopped("stopped while waiting for the images being prepared")
        try:
            with self._lock:
                return self._data.get(key)
        finally:
            lock.release()

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
        max_queued: how many jobs may wait for a busy device (all devices together); one
            more raises :class:`QueueFullError`.
        keep_finished: how many ended jobs :meth:`get` still finds (the oldest ended are
            forgotten first; their runs stay on disk).

    At most one job runs per device; later ones wait in the ``queued`` state, without a
    thread, and start in the order they came when the device is free.
    """

    def __init__(
        self,
        store: RunStore | str | Path = "runs",
        feature_cache: FeatureCache | None = None,
        prepared: PreparedImages | None = None,
        *,
        max_queued: int = MAX_QUEUED,
        keep_finished: int = KEEP_FINISHED,
    ) -> None:
        for name, value in (("max_queued", max_queued), ("keep_finished", keep_finished)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self.prepared = prepared if prepared is not None else PreparedImages(feature_cache)
        self.feature_cache = self.prepared.feature_cache
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}  # every job still remembered, oldest first
        self._running: dict[str, Job] = {}  # device -> the job that holds it
        self._waiting: dict[str, deque[Job]] = {}  # device -> jobs waiting for it, in order
        self._ended: deque[str] = deque()  # ids of ended jobs, in the order they ended
        self._lock = threading.Lock()

    def prepared_data(
        self, config: ExperimentConfig, stop_event: threading.Event | None = None
    ) -> dict | None:
        """The images of ``config`` if :meth:`prepare` (or an earlier job) made them, else
        ``None``; waits while another thread is preparing them (see
        :meth:`PreparedImages.get` for ``stop_event``)."""
        return self.prepared.get(config, stop_event=stop_event)

    def is_prepared(self, config: ExperimentConfig) -> bool:
        """Whether ``config``'s images are ready in memory (never waits)."""
        return self.prepared.ready(config)

    def prepare(self, config: ExperimentConfig) -> None:
        """Draw or load ``config``'s images and compute its frozen encoders' features now, so
        that a job started later with the same data begins training at once. Thread-safe;
        concurrent calls for the same data do the work once."""
        self.prepared.prepare(config)

    # --- queue ----------------------------------------------------------------------------

    def _admit(self, job: Job, exclusive: bool) -> None:
        """Start ``job`` now if its device is free, else queue it (atomically)."""
        device = job.device
        with self._lock:
            current = self._running.get(device)
            waiting = self._waiting.get(device)
            if exclusive and (current is not None or waiting):
                other = current if current is not None else waiting[0]
                what = "running" if current is not None else "waiting"
                raise DeviceBusyError(
                    f"a training is already {what} on {device}: job {other.id}"
                    + (f" (run {other.run_name})" if other.run_name else "")
                    + "; wait for it to end or stop it first"
                )
            if current is not None:
                queued = sum(len(q) for q in self._waiting.values())
                if queued >= self.max_queued:
                    raise QueueFullError(
                        f"{queued} jobs are already waiting for a device (the limit is "
                        f"max_queued={self.max_queued}); wait for one to end or cancel one"
                    )
                self._jobs[job.id] = job
                self._waiting.setdefault(device, deque()).append(job)
                logger.info("job %s queued for %s", job.id, device)
                return
            self._jobs[job.id] = job
            self._running[device] = job
        self._launch(job)

    def _launch(self, job: Job) -> None:
        with job._lock:  # it holds its device now: no longer waiting
            if job._state is RunStatus.QUEUED:
                job._state, job._message = RunStatus.RUNNING, "starting"
        try:
            job._start()
        except BaseException as error:  # noqa: BLE001 - e.g. "can't start new thread"
            logger.error("job %s: could not start its thread: %s", job.id, error)
            with job._lock:
                job._error = f"{type(error).__name__}: {error}"
            job._end_unstarted(RunStatus.FAILED, f"could not start its thread: {error}")

    def _withdraw(self, job: Job) -> bool:
        """Take a waiting ``job`` out of its queue; False when it is not waiting (any more)."""
        with self._lock:
            queue = self._waiting.get(job.device)
            if not queue or job not in queue:
                return False
            queue.remove(job)
            if not queue:
                del self._waiting[job.device]
            return True

    def _job_ended(self, job: Job) -> None:
        """Hand the device to the next waiting job; forget the oldest ended jobs."""
        successor = None
        with self._lock:
            device = job.device
            if self._running.get(device) is job:
                del self._running[device]
                queue = self._waiting.get(device)
                if queue:
                    successor = queue.popleft()
                    if not queue:
                        del self._waiting[device]
                    self._running[device] = successor
            self._ended.append(job.id)
            while len(self._ended) > self.keep_finished:
                self._jobs.pop(self._ended.popleft(), None)
        logger.info("job %s ended: %s", job.id, job.snapshot().state.value)
        if successor is not None:
            self._launch(successor)

    # --- public ---------------------------------------------------------------------------

    def submit(
        self, config: ExperimentConfig, run_name: str | None = None, *, exclusive: bool = False
    ) -> Job:
        """Start (or queue) a new job that trains ``config`` into a new run.

        Raises (before any thread starts):
            mist_core.resources.ResourceError: ``config`` would not fit in this machine.
            DeviceBusyError: ``exclusive`` and a job is running or waiting on its device.
            QueueFullError: ``max_queued`` jobs are already waiting.
        """
        check_resources(config)
        job = Job(self, config, run_name=run_name)
        self._admit(job, exclusive)
        return job

    def resume(
        self,
        run_name: str,
        config: ExperimentConfig | None = None,
        *,
        exclusive: bool = False,
    ) -> Job:
        """Continue a stopped or interrupted run from its last checkpoint, appending to its
        metrics. ``run_name`` is a run's name or the path of its folder.

        ``config`` may change where it runs (``device``), not what it trains. The run's
        writer lock is taken here, so a run being trained by another job or process raises
        :class:`~mist_core.runs.RunBusyError` to the caller; the errors of :meth:`submit`
        are raised too."""
        run = self.store.open(run_name)
        for job in self.active():
            if job.run_name == run.name:
                raise RunBusyError(
                    f"run {run.name!r} is already being trained by job {job.id} in this "
                    "process; stop it first (or wait)"
                )
        if not run.has_checkpoint():
            raise ValueError(f"run {run.name!r} has no checkpoint to resume from")
        config = config or run.config()
        check_resources(config)
        owner = run.acquire_writer()
        try:
            job = Job(self, config, resume=True, run=run, owner=owner)
            self._admit(job, exclusive)
        except BaseException:
            owner.release()
            raise
        return job

    def get(self, job_id: str) -> Job:
        """The job of that id; ``KeyError`` for an unknown id or one ended long ago."""
        with self._lock:
            if job_id not in self._jobs:
                known = list(self._jobs)
                listed = ", ".join(known[-10:]) or "none"
                raise KeyError(
                    f"no job {job_id!r} (unknown, or ended and forgotten: only the last "
                    f"{self.keep_finished} ended jobs are kept); known jobs: {listed}"
                )
            return self._jobs[job_id]

    def jobs(self) -> list[Job]:
        """Every job this registry remembers, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def active(self, device: str | None = None) -> list[Job]:
        """The jobs running or waiting (on ``device``, any spelling a config accepts, e.g.
        ``"auto"``), oldest first."""
        key = device_key(device) if device is not None else None
        with self._lock:
            jobs = list(self._running.values()) + [j for q in self._waiting.values() for j in q]
        jobs = [j for j in jobs if key is None or j.device == key]
        return sorted(jobs, key=lambda j: j._created)

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
