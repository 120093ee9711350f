"""Why the job registry refuses a new job."""

from __future__ import annotations

__all__ = ["DeviceBusyError", "QueueFullError"]


class DeviceBusyError(RuntimeError):
    """``submit(..., exclusive=True)`` while a job is running or waiting on that device."""


class QueueFullError(RuntimeError):
    """``submit`` or ``resume`` while ``max_queued`` jobs are already waiting."""
