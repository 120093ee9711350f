"""torch's global random generator is one per process, shared by every thread.

The dashboard builds experiments (seeded random weights) in one thread while jobs train in
others; a seed set by one thread and draws made by another would interleave and change the
weights. Whoever seeds the global generator and draws from it does so holding this lock;
everything else in mist_core draws from generators of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["GLOBAL_RNG_LOCK", "seeded"]

GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator and keep other threads off it for the block."""
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(seed)
        yield
