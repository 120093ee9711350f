"""``SyntheticFaces``: a dataset of drawn faces, item ``i`` drawn from ``(seed, i)`` alone."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch
from torch.utils.data import Dataset

from mist_core.data.landmarks import CELEBA_SIZE, LANDMARKS
from mist_core.data.stopping import check_stop
from mist_core.data.synthetic_faces.drawing import render_face
from mist_core.data.synthetic_faces.params import FaceParams
from mist_core.data.synthetic_faces.sampling import sample_face_params
from mist_core.data.synthetic_faces.workers import (
    CHUNK_FACES,
    TASK_FACES,
    concatenate,
    ended_with,
    kill_pool,
    start_pool,
    task_blocks,
    wait_result,
)

__all__ = ["SyntheticFaces"]

logger = logging.getLogger("mist_core.data.synthetic_faces")  # one logger for the package

_MIN_SIZE, _MAX_SIZE = 32, 4096  # allowed image height and width, in pixels


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


class SyntheticFaces(Dataset):
    """``n`` procedurally drawn faces with the five CelebA landmarks (offline, exact, fast).

    Item ``i`` is a dict: ``"image"``: float32 tensor ``[3, H, W]`` in [0, 1]; and, for each
    name in ``LANDMARKS``, a float32 tensor ``[2]`` = (x, y) in pixels, x to the right and y
    downward, pixel column ``j`` covering x in ``[j, j + 1)`` (so the centre of pixel (i, j)
    is (j + 0.5, i + 0.5)). It depends only on ``(seed, i)``.

    Args:
        n: number of items (>= 0).
        seed: non-negative integer; different seeds give different faces.
        image_size: ``(height, width)``, each in [32, 4096]; the default is aligned CelebA's.
            The face geometry scales with the width and height.
    """

    def __init__(self, n: int, seed: int = 0, image_size: tuple[int, int] = CELEBA_SIZE) -> None:
        n = _check_int("n", n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        seed = _check_int("seed", seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        try:
            height, width = image_size
        except (TypeError, ValueError):
            raise ValueError(
                f"image_size must be a (height, width) pair, got {image_size!r}"
            ) from None
        height, width = _check_int("image height", height), _check_int("image width", width)
        if not (_MIN_SIZE <= height <= _MAX_SIZE and _MIN_SIZE <= width <= _MAX_SIZE):
            raise ValueError(
                f"image_size (height, width) must lie in [{_MIN_SIZE}, {_MAX_SIZE}] each, "
                f"got {image_size!r}"
            )
        self.n, self.seed, self.image_size = n, seed, (height, width)

    def __len__(self) -> int:
        return self.n

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index out of range for {self.n} items")
        return index

    def _indices(self, indices: Sequence[int]) -> list[int]:
        """``[self._index(i) for i in indices]``, at once for a range within bounds."""
        if isinstance(indices, range) and (
            len(indices) == 0 or (0 <= indices[0] < self.n and 0 <= indices[-1] < self.n)
        ):
            return list(indices)
        return [self._index(i) for i in indices]

    def params(self, index: int) -> FaceParams:
        """The parameters of item ``index`` (negative indices count from the end)."""
        rng = np.random.default_rng([self.seed, self._index(index)])
        return sample_face_params(rng, self.image_size)

    def render(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Item ``index`` as ``render_face`` returns it: uint8 ``[H, W, 3]`` and landmarks."""
        return render_face(self.params(index))

    def render_block(self, indices: Sequence[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Items ``indices`` drawn here, one after another: uint8 ``[N, H, W, 3]`` and
        ``{name: [N, 2]}`` (what a worker process of :meth:`render_chunks` does)."""
        height, width = self.image_size
        images = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        landmarks = {name: np.empty((len(indices), 2), dtype=np.float64) for name in LANDMARKS}
        for k, index in enumerate(indices):
            images[k], marks = self.render(index)
            for name in LANDMARKS:
                landmarks[name][k] = marks[name]
        return images, landmarks

    def render_chunks(
        self,
        indices: Sequence[int],
        *,
        chunk_size: int = CHUNK_FACES,
        workers: int | None = None,
        stop_event: threading.Event | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Items ``indices`` in order, ``chunk_size`` at a time: for each chunk, uint8 images
        ``[n, H, W, 3]`` and ``{name: [n, 2]}`` (``n = chunk_size``, less in the last one).

        Memory stays bounded whatever ``len(indices)``: at most two chunks are being drawn
        or held at a time. With ``workers`` > 1 (default: one per CPU core for 256 items or
        more) the faces are drawn in forked worker processes, ``TASK_FACES`` per task (drawing
        is numpy code that holds the GIL, so threads would not help); the workers die with
        this process (SIGKILL from the kernel on Linux, whatever kills it), take SIGTERM and
        SIGINT with the default action, and are killed at once when anything goes wrong
        here, including a stop, a ``KeyboardInterrupt`` or the caller closing the iterator.
        Falls back to drawing here when processes cannot be forked or die. The result is the
        same either way: item ``i`` depends on ``(seed, i)`` only.

        Raises:
            PreparationStopped: ``stop_event`` was set (checked several times a second).
        """
        chunk_size = _check_int("chunk_size", chunk_size)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        order = self._indices(indices)
        chunks = [order[k : k + chunk_size] for k in range(0, len(order), chunk_size)]
        if workers is None:
            workers = (os.cpu_count() or 1) if len(order) >= 256 else 1
        workers = max(1, min(int(workers), math.ceil(len(order) / TASK_FACES)))
        pool = start_pool(workers) if workers > 1 else None
        submitted: dict[int, list[Future]] = {}

        def submit(c: int) -> None:  # chunk c's tasks, unless handed out already
            if pool is not None and c < len(chunks) and c not in submitted:
                submitted[c] = [pool.submit(self.render_block, b) for b in task_blocks(chunks[c])]

        with ended_with(pool):  # killed on a stop, Ctrl-C, an error or the iterator closed
            for c, chunk in enumerate(chunks):
                drawn = None
                if pool is not None:
                    try:
                        submit(c)
                        submit(c + 1)  # drawn while this process takes chunk c on
                        drawn = concatenate([wait_result(f, stop_event) for f in submitted.pop(c)])
                    except (OSError, BrokenProcessPool) as error:
                        logger.warning("drawing faces in this process (workers failed: %s)", error)
                        kill_pool(pool)
                        pool = None
                if drawn is None:
                    parts = []
                    for block in task_blocks(chunk):
                        check_stop(stop_event, "drawing faces")
                        parts.append(self.render_block(block))
                    drawn = concatenate(parts)
                yield drawn

    def render_many(
        self,
        indices: Sequence[int],
        workers: int | None = None,
        stop_event: threading.Event | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Items ``indices`` at once: uint8 images ``[N, H, W, 3]`` and ``{name: [N, 2]}``.

        Drawn with :meth:`render_chunks` (worker processes for 256 items or more, see there)
        straight into the result: memory is the result plus two chunks. For many items at
        a smaller size, resize :meth:`render_chunks`' chunks instead (a 218 x 178 face is
        116 KB).

        Raises:
            PreparationStopped: ``stop_event`` was set.
        """
        order = self._indices(indices)
        height, width = self.image_size
        images = np.empty((len(order), height, width, 3), dtype=np.uint8)
        landmarks = {name: np.empty((len(order), 2), dtype=np.float64) for name in LANDMARKS}
        done = 0
        for chunk, marks in self.render_chunks(order, workers=workers, stop_event=stop_event):
            images[done : done + len(chunk)] = chunk
            for name in LANDMARKS:
                landmarks[name][done : done + len(chunk)] = marks[name]
            done += len(chunk)
        return images, landmarks

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, landmarks = self.render(index)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        item = {"image": torch.from_numpy(chw).float().div_(255.0)}
        for name in LANDMARKS:
            item[name] = torch.tensor(landmarks[name], dtype=torch.float32)
        return item

    def __repr__(self) -> str:
        return f"SyntheticFaces(n={self.n}, seed={self.seed}, image_size={self.image_size})"
