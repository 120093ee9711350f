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

A job's states are a run's: :class:`mist_core.runs.RunStatus`. Images prepared ahead of the
jobs live in :class:`mist_core.experiment.PreparedImages`.
"""

from mist_core.jobs.errors import DeviceBusyError, QueueFullError
from mist_core.jobs.job import Job
from mist_core.jobs.registry import JobRegistry
from mist_core.jobs.snapshot import JobSnapshot, environment

__all__ = [
    "DeviceBusyError",
    "Job",
    "JobRegistry",
    "JobSnapshot",
    "QueueFullError",
    "environment",
]
