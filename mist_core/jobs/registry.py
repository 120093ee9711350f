"""The process-wide set of training jobs (:class:`JobRegistry`): at most one runs per device."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

from mist_core.checkpoints import run_store
from mist_core.data.features import FeatureCache
from mist_core.devices import device_key
from mist_core.experiment import ExperimentConfig, PreparedImages
from mist_core.jobs.errors import DeviceBusyError, QueueFullError
from mist_core.jobs.job import Job
from mist_core.resources import check_resources
from mist_core.runs import RunBusyError, RunStore

__all__ = ["KEEP_FINISHED", "MAX_QUEUED", "JobRegistry"]

logger = logging.getLogger(__name__)

#: Defaults of :class:`JobRegistry`: jobs waiting for a device; ended jobs remembered.
MAX_QUEUED = 8
KEEP_FINISHED = 20


class JobRegistry:
    """The process-wide set of jobs: submit, find, list, cancel, shut down.

    Args:
        store: the run store every job writes to, one whose configs are experiment configs
            (:func:`mist_core.checkpoints.run_store`), or its root folder.
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
        self.store = store if isinstance(store, RunStore) else run_store(store)
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
        :meth:`~mist_core.experiment.PreparedImages.get` for ``stop_event``)."""
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
        job._launch()

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
            successor._launch()

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
        return sorted(jobs, key=lambda j: j.created)

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
