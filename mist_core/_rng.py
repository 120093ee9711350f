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

__all__ = ["GLOBAL_RNG_LOCK", "seeded", "seeded_permutation"]

GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator and keep other threads off it for the block."""
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(seed)
        yield


def seeded_permutation(
    n: int, seed: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random order of ``range(n)`` (``[n]``, int64) fixed by ``seed`` alone.

    Every seeded split draws its order here, from a generator of its own, so a split depends
    on nothing but its seed: not on the global generator, nor on what other threads draw.
    ``generator`` (a fresh one by default) is seeded with ``seed`` and drawn from; a caller
    that goes on drawing from it (e.g. to shuffle the split's first part) continues one
    random stream fixed by the same seed.
    """
    generator = torch.Generator() if generator is None else generator
    return torch.randperm(n, generator=generator.manual_seed(seed))
