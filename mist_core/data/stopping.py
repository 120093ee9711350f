"""Stopping long preparations (drawing faces, decoding images, computing features) early.

The loops that prepare data check a ``threading.Event`` between small pieces of work and
raise :class:`PreparationStopped` once it is set, so that a Stop pressed while images are
being drawn takes effect within about a second instead of after the whole preparation.
"""

from __future__ import annotations

import threading

__all__ = ["PreparationStopped", "check_stop"]


class PreparationStopped(Exception):
    """The preparation of images or features was stopped (its ``stop_event`` was set)."""


def check_stop(stop_event: threading.Event | None, what: str = "preparation") -> None:
    """Raise :class:`PreparationStopped` when ``stop_event`` is set."""
    if stop_event is not None and stop_event.is_set():
        raise PreparationStopped(f"{what} stopped")
