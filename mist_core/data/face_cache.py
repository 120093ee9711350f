"""Drawn faces kept on disk at the encoders' size, so that a second run with the same faces
does not draw them again.

Drawing a face costs about 3 ms of a CPU core (4,200 of them: 12 s on two cores), and a
drawn dataset is fixed by its size, seed and frame: :func:`load_drawn` and
:func:`save_drawn` keep the resized uint8 images ``[N, 3, H, W]`` and their landmarks in
``<cache>/drawn/<key>.pt``, where ``<cache>`` is the image store's folder
(``$MIST_IMAGE_CACHE`` or ``~/.cache/mist/images``). The key hashes the faces' count, seed and
frame, the size they were resized to, and the source of the drawing and resizing code, so a
change to how faces are drawn is never served stale images. Files are written atomically; an
unreadable or mismatched file is ignored (and replaced by the next save).
"""

from __future__ import annotations

import hashlib
import io
import logging
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from mist_core.data import images as resize_module
from mist_core.data import synthetic_faces as drawing_package
from mist_core.data.store import default_cache_dir
from mist_core.data.synthetic_faces import SyntheticFaces
from mist_core.runs import write_atomic

__all__ = ["drawing_code_hash", "drawn_key", "load_drawn", "save_drawn"]

logger = logging.getLogger(__name__)


@cache
def drawing_code_hash() -> str:
    """A hash of the code that decides the pixels: the drawing package and the resize."""
    digest = hashlib.blake2b(digest_size=16)
    folder = Path(drawing_package.__file__).parent
    for path in sorted([*folder.glob("*.py"), Path(resize_module.__file__)]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def drawn_key(faces: SyntheticFaces, size: tuple[int, int]) -> str:
    """Names ``faces`` resized to ``size`` (height, width) with the current drawing code."""
    identity = f"{faces.n}|{faces.seed}|{faces.image_size}|{tuple(size)}|{drawing_code_hash()}"
    return hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()


def _path(faces: SyntheticFaces, size: tuple[int, int]) -> Path:
    return default_cache_dir() / "drawn" / f"{drawn_key(faces, size)}.pt"


def load_drawn(
    faces: SyntheticFaces, size: tuple[int, int]
) -> tuple[Tensor, dict[str, Tensor]] | None:
    """The saved ``images uint8 [N, 3, H, W]`` and ``{landmark: [N, 2]}`` of these faces at
    ``size``, or None when there are none (or they cannot be read)."""
    path = _path(faces, size)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        images, targets = saved["images"], saved["targets"]
        if images.dtype != torch.uint8 or tuple(images.shape) != (faces.n, 3, *size):
            raise ValueError(f"images of shape {tuple(images.shape)} and dtype {images.dtype}")
        if any(tuple(v.shape) != (faces.n, 2) for v in targets.values()):
            raise ValueError("landmarks of the wrong shape")
    except Exception as error:  # a torn or foreign file: draw again
        logger.warning("ignoring the saved drawn faces %s (%s); drawing them again", path, error)
        return None
    return images, targets


def save_drawn(
    faces: SyntheticFaces, size: tuple[int, int], images: Tensor, targets: dict[str, Tensor]
) -> None:
    """Keep these faces' resized images and landmarks for the next run; a failure to write
    (a read-only or full disk) is logged, not raised: the run goes on without the cache."""
    path = _path(faces, size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({"images": images, "targets": targets}, buffer)
        write_atomic(path, buffer.getvalue())
    except OSError as error:
        logger.warning("could not keep the drawn faces in %s (%s)", path, error)
