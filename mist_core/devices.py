"""Which torch device a setting such as ``"auto"``, ``"cuda"`` or ``"cuda:1"`` means.

One parser serves both the training loop (:func:`resolve_device`, which refuses a CUDA device
that is not there) and the job registry (:func:`device_key`, which names the queue a job
waits in and must not fail on a setting the config validation reports anyway).
"""

from __future__ import annotations

import torch

__all__ = ["device_key", "resolve_device"]


def _parse(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as torch reads it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as given.

    Raises:
        ValueError: a CUDA device is asked for and none is available.
    """
    resolved = _parse(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was asked for but no CUDA device is available; use 'cpu' or 'auto'"
        )
    return resolved


def device_key(device: str) -> str:
    """The device a config's ``device`` trains on, as the job registry queues jobs.

    ``"auto"`` resolved (``"cuda:0"`` when CUDA is available, else ``"cpu"``), ``"cuda"`` as
    ``"cuda:0"`` so that both spellings share one queue; a setting torch cannot read comes
    back unchanged (the config validation reports it).
    """
    try:
        resolved = _parse(device)
    except (RuntimeError, TypeError, ValueError):
        return str(device)
    if resolved.type == "cuda" and resolved.index is None:
        return "cuda:0"
    return str(resolved)
