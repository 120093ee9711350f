"""Decoded images on disk: a dataset's JPEGs decoded once, resized, kept as a uint8 memory map.

Decoding a JPEG with PIL costs far more than training a small encoder on it, and the seed
preset decodes every image every epoch. :func:`open_store` decodes each image of a CelebA
dataset ONCE, resized to ``(H, W)`` with the same resize and rounding as the experiment's
in-memory preload (``data.images.resize_images`` then ``to_uint8``), into a file-backed
``uint8 [N, 3, H, W]`` array, and reopens it in later runs and other processes at no cost.
:class:`StoredImages` reads it: items like the preloaded ones, or whole batches as uint8 for
a training loop that converts (and augments) on the device. Reading maps the file, so the
process's own memory stays flat over epochs (the pages read are the kernel's page cache,
shared and reclaimable).

Layout and identity
-------------------
``<cache_dir>/<key>/`` holds ``images.npy`` (uint8 ``[N, 3, H, W]``), ``landmarks.npy``
(float32 ``[N, 5, 2]``) and ``meta.json``. The ``key`` (:func:`store_key`) hashes the
format version, the resolved image folder, the split, the image file names in item order,
the MD5 of ``list_landmarks_align_celeba.txt`` and ``(H, W)``; images replaced under the same
names with the same landmark file are *not* noticed (delete the store). ``cache_dir``
defaults to ``$MIST_IMAGE_CACHE`` or ``~/.cache/mist/images``.

The landmarks are stored as the source dataset gives them, ``(x, y)`` in pixels of the
source 178 x 218 images, not rescaled to ``(H, W)``: the experiment keeps them in that frame
too (its encoders see resized images, its targets are in source pixels).

Building
--------
Chunks of files are decoded and resized in forked worker processes (PIL decode plus one
torch thread each), which write straight into the memory-mapped file; the parent only counts.
Everything is written in a temporary folder ``.<key>.<pid>.<token>.tmp`` that is renamed to
``<key>`` once complete, after ``meta.json`` (written last, atomically) records the shapes
and a BLAKE2 hash of ``images.npy``: an interrupted or stopped build never looks complete.
A file lock makes a second process wait for a build in progress, then reuse it. Opening
checks the metadata and the files' sizes (``StoreConfig.verify`` also rehashes the images);
a store that fails is logged, deleted and rebuilt.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from mist_core.data.celeba import CelebALandmarks, file_md5
from mist_core.data.images import resize_images, to_uint8
from mist_core.data.landmarks import CELEBA_SIZE, LANDMARKS
from mist_core.data.stopping import check_stop
from mist_core.data.synthetic_faces.workers import ended_with, kill_pool, start_pool
from mist_core.runs import write_atomic

try:  # file locks: POSIX only; elsewhere concurrent builds both run and one rename wins
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CACHE_ENV",
    "FORMAT_VERSION",
    "ImageFiles",
    "StoreConfig",
    "StoredImages",
    "default_cache_dir",
    "image_files",
    "open_store",
    "store_key",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the files' layout or the decoding changes: old stores are then ignored.
FORMAT_VERSION: Final[int] = 1
#: Environment variable naming the cache folder (default ``~/.cache/mist/images``).
CACHE_ENV: Final[str] = "MIST_IMAGE_CACHE"
_IMAGES, _LANDMARKS, _META = "images.npy", "landmarks.npy", "meta.json"
_RESIZE_BATCH = 64  # images resized at once in a worker (30 MB of float32 at 218 x 178)
_POLL_S = 0.1  # how often a stop is checked while workers decode
_LANDMARK_FILE = "list_landmarks_align_celeba.txt"


def default_cache_dir() -> Path:
    """``$MIST_IMAGE_CACHE`` if set, else ``~/.cache/mist/images``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mist" / "images"


@dataclass(frozen=True)
class StoreConfig:
    """How to store a dataset's images.

    Args:
        image_size: ``(H, W)`` the images are resized to.
        cache_dir: where stores live; ``None``: :func:`default_cache_dir`.
        workers: decoding processes; ``None``: one per CPU core (one for a single chunk).
        chunk_files: images per worker task.
        verify: also rehash ``images.npy`` when opening an existing store (a second or so
            per GB); without it only the metadata and file sizes are checked.
    """

    image_size: tuple[int, int]
    cache_dir: Path | None = None
    workers: int | None = None
    chunk_files: int = 256
    verify: bool = False

    def __post_init__(self) -> None:
        height, width = self.image_size
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise ValueError(f"image_size must be two positive ints, got {self.image_size!r}")
        object.__setattr__(self, "image_size", (height, width))
        if self.chunk_files < 1:
            raise ValueError(f"chunk_files must be >= 1, got {self.chunk_files}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @property
    def folder(self) -> Path:
        """The cache folder this config uses."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


@dataclass(frozen=True)
class ImageFiles:
    """The files behind a dataset: ``folder / names[i]`` is item ``i``'s image, with
    ``landmarks[i]`` (float32 ``[5, 2]``, source pixels); ``split`` and ``landmark_file``
    identify it."""

    folder: Path
    names: tuple[str, ...]
    landmarks: Tensor  # float32 [N, 5, 2]
    split: str
    landmark_file: Path


def image_files(dataset: Dataset) -> ImageFiles:
    """The files of a :class:`CelebALandmarks` or of a ``Subset`` of one (as the experiment
    takes ``train_size`` images); no image is read.

    Raises:
        TypeError: any other dataset.
    """
    indices: list[int] | None = None
    if isinstance(dataset, Subset):
        indices = [int(i) for i in dataset.indices]
        dataset = dataset.dataset
    if not isinstance(dataset, CelebALandmarks):
        raise TypeError(
            f"can only store CelebALandmarks (or a Subset of one), got {type(dataset).__name__}"
        )
    names, landmarks, split = dataset.filenames, dataset.landmarks, dataset.split
    if indices is not None:
        names = [names[i] for i in indices]
        landmarks = landmarks[indices]
        split = f"{split}-subset"
    return ImageFiles(
        folder=dataset.image_folder.resolve(),
        names=tuple(names),
        landmarks=landmarks.to(torch.float32),
        split=split,
        landmark_file=dataset.image_folder.parent / _LANDMARK_FILE,
    )


def _identity(files: ImageFiles, image_size: tuple[int, int]) -> dict[str, Any]:
    names = hashlib.sha256("\n".join(files.names).encode()).hexdigest()
    return {
        "format_version": FORMAT_VERSION,
        "folder": str(files.folder),
        "split": files.split,
        "n": len(files.names),
        "names_sha256": names,
        "landmark_file_md5": file_md5(files.landmark_file),
        "image_size": list(image_size),
    }


def store_key(files: ImageFiles, image_size: tuple[int, int]) -> str:
    """The store's folder name: ``<split>-<N>-<H>x<W>-<hash>``, the hash over the format
    version, folder, split, file names, landmark file's MD5 and size."""
    identity = _identity(files, image_size)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    height, width = image_size
    return f"{files.split}-{len(files.names)}-{height}x{width}-{digest}"


class StoredImages(Dataset):
    """A built store: ``images`` uint8 ``[N, 3, H, W]`` (memory-mapped, read-only) and
    ``landmarks`` float32 ``[N, 5, 2]`` (in memory, source pixels, ``LANDMARKS`` order).

    Item ``i`` is like the experiment's preloaded items: ``{"image": float32 [3, H, W] in
    [0, 1], "left_eye": [2], ...}``. :meth:`batch` gives many at once as uint8. Pickles as
    its folder (a DataLoader worker maps the file again, nothing is copied).
    """

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder: Path = Path(folder)
        self.meta: dict[str, Any] = meta
        self.image_size: tuple[int, int] = tuple(meta["identity"]["image_size"])  # type: ignore[assignment]
        self.landmarks: Tensor = torch.from_numpy(np.load(self.folder / _LANDMARKS))
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        """uint8 ``[N, 3, H, W]``, a read-only memory map of ``images.npy``."""
        if self._images is None:
            self._images = np.load(self.folder / _IMAGES, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.landmarks)

    def _index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return index % n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = self._index(int(index))
        image = torch.from_numpy(np.array(self.images[i])).float().div_(255.0)
        points = self.landmarks[i]
        return {"image": image, **{name: points[k].clone() for k, name in enumerate(LANDMARKS)}}

    def batch(self, indices: Sequence[int] | Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Images ``indices`` as uint8 ``[B, 3, H, W]`` (a fresh copy, read in file order)
        and their landmarks float32 ``[B, 5, 2]``. Convert with ``.float().div_(255)``,
        ideally after moving to the device (a quarter of the bytes to copy)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} images")
        idx = idx % n if n else idx
        order = np.argsort(idx, kind="stable")
        images = np.empty((len(idx), 3, *self.image_size), dtype=np.uint8)
        images[order] = self.images[idx[order]]  # sorted: sequential reads of the file
        return torch.from_numpy(images), self.landmarks[torch.from_numpy(idx)]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}

    def __repr__(self) -> str:
        return f"StoredImages({str(self.folder)!r}, n={len(self)}, image_size={self.image_size})"


# --------------------------------------------------------------------------------------------
# Opening and building
# --------------------------------------------------------------------------------------------


def open_store(
    dataset: Dataset | ImageFiles,
    config: StoreConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    stop_event: threading.Event | None = None,
) -> StoredImages:
    """The store of ``dataset``'s images at ``config.image_size``: reused when a complete
    one exists (no image decoded), else built (see the module docstring).

    ``progress(done, total)`` is called as images are decoded (and once with
    ``(total, total)`` when the store is reused).

    Raises:
        PreparationStopped: ``stop_event`` was set during the build (nothing is left behind
            that looks complete).
        FileNotFoundError, ValueError: an image is missing, or is not 178 x 218.
    """
    files = dataset if isinstance(dataset, ImageFiles) else image_files(dataset)
    if not files.names:
        raise ValueError("cannot store an empty dataset")
    identity = _identity(files, config.image_size)
    key = store_key(files, config.image_size)
    cache = config.folder
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / key
    with _locked(cache / f".{key}.lock"):
        store = _open_existing(final, identity, config.verify)
        if store is None:
            _remove_leftovers(cache, key)
            _build(files, identity, final, config, progress, stop_event)
            store = _open_existing(final, identity, verify=False)
            if store is None:  # pragma: no cover - just written
                raise RuntimeError(f"the image store {final} just built does not open")
        elif progress is not None:
            progress(len(store), len(store))
    return store


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (waits for another process's build)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _remove_leftovers(cache: Path, key: str) -> None:
    """Delete interrupted builds of ``key`` (only the lock holder builds, so all are dead)
    and an invalid store at ``key``."""
    for path in [*cache.glob(f".{key}.*.tmp"), cache / key]:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _images_bytes(identity: dict[str, Any]) -> int:
    height, width = identity["image_size"]
    return int(identity["n"]) * 3 * height * width


def _hash_file(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _open_existing(folder: Path, identity: dict[str, Any], verify: bool) -> StoredImages | None:
    """The complete, valid store in ``folder``; ``None`` (logged when it exists) otherwise."""
    meta_path = folder / _META
    if not meta_path.is_file():
        if folder.exists():
            logger.warning("image store %s is incomplete (no %s): rebuilding", folder, _META)
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("identity") != identity:
            raise ValueError("its metadata describes other images")
        n, (height, width) = identity["n"], identity["image_size"]
        images = np.load(folder / _IMAGES, mmap_mode="r")
        if images.dtype != np.uint8 or images.shape != (n, 3, height, width):
            raise ValueError(f"images.npy is {images.dtype} {images.shape}")
        if (folder / _IMAGES).stat().st_size != meta["images_file_bytes"]:
            raise ValueError("images.npy has the wrong size")
        del images
        landmarks = np.load(folder / _LANDMARKS)
        if landmarks.dtype != np.float32 or landmarks.shape != (n, len(LANDMARKS), 2):
            raise ValueError(f"landmarks.npy is {landmarks.dtype} {landmarks.shape}")
        if verify and _hash_file(folder / _IMAGES) != meta["images_blake2b"]:
            raise ValueError("images.npy does not match its hash")
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        logger.warning("image store %s is corrupted (%s): rebuilding", folder, error)
        return None
    logger.debug("reusing image store %s", folder)
    return StoredImages(folder, meta)


def _decode_into(
    images_path: str,
    start: int,
    paths: list[str],
    image_size: tuple[int, int],
    in_worker: bool = False,
) -> int:
    """Decode ``paths``, resize them, write them to rows ``start...`` of the ``.npy`` file
    at ``images_path``; return how many. Runs in a worker process (or here)."""
    if in_worker:
        torch.set_num_threads(1)  # one thread per worker (and no OpenMP pool after a fork)
    out = np.load(images_path, mmap_mode="r+")
    try:
        for offset in range(0, len(paths), _RESIZE_BATCH):
            part = paths[offset : offset + _RESIZE_BATCH]
            batch = torch.empty((len(part), 3, *CELEBA_SIZE), dtype=torch.uint8)
            for k, path in enumerate(part):
                batch[k] = _decode(path)
            resized = to_uint8(resize_images(batch.float().div_(255.0), image_size))
            out[start + offset : start + offset + len(part)] = resized.numpy()
        out.flush()
    finally:
        del out
    return len(paths)


def _decode(path: str) -> Tensor:
    """An aligned-CelebA JPEG as uint8 ``[3, 218, 178]`` RGB, as ``CelebALandmarks`` reads it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} is missing (listed in the annotation files)")
    with Image.open(path) as image:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        array = np.asarray(rgb, dtype=np.uint8)
    if array.shape[:2] != CELEBA_SIZE:
        raise ValueError(
            f"image {path} is {array.shape[1]}x{array.shape[0]} (width x height); aligned "
            f"CelebA images are {CELEBA_SIZE[1]}x{CELEBA_SIZE[0]}"
        )
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _build(
    files: ImageFiles,
    identity: dict[str, Any],
    final: Path,
    config: StoreConfig,
    progress: Callable[[int, int], None] | None,
    stop_event: threading.Event | None,
) -> None:
    """Build the store in a temporary folder, then rename it to ``final``."""
    n = len(files.names)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        logger.info("decoding %d images of %s into %s", n, files.folder, final)
        images_path = tmp / _IMAGES
        memmap = np.lib.format.open_memmap(
            images_path, mode="w+", dtype=np.uint8, shape=(n, 3, *config.image_size)
        )
        del memmap  # workers open it themselves
        paths = [str(files.folder / name) for name in files.names]
        chunks = {
            start: paths[start : start + config.chunk_files]
            for start in range(0, n, config.chunk_files)
        }
        _decode_chunks(str(images_path), chunks, n, config, progress, stop_event)
        check_stop(stop_event, "decoding the images")
        np.save(tmp / _LANDMARKS, files.landmarks.numpy().astype(np.float32))
        with images_path.open("rb+") as file:
            os.fsync(file.fileno())
        meta = {
            "identity": identity,
            "images_file_bytes": images_path.stat().st_size,
            "images_blake2b": _hash_file(images_path),
            "source": "mist_core.data.store",
        }
        write_atomic(tmp / _META, json.dumps(meta, indent=1).encode())  # last
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _decode_chunks(
    images_path: str,
    chunks: dict[int, list[str]],
    total: int,
    config: StoreConfig,
    progress: Callable[[int, int], None] | None,
    stop_event: threading.Event | None,
) -> None:
    """Every chunk decoded into the file: in worker processes, or here for one worker."""
    workers = config.workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, len(chunks)))
    pool = start_pool(workers) if workers > 1 else None
    todo = dict(chunks)
    done = 0
    if progress is not None:
        progress(0, total)
    with ended_with(pool):  # killed on a stop, an error or Ctrl-C
        if pool is not None:
            try:
                pending = {
                    pool.submit(_decode_into, images_path, s, p, config.image_size, True): s
                    for s, p in todo.items()
                }
                while pending:
                    check_stop(stop_event, "decoding the images")
                    finished, _ = concurrent.futures.wait(
                        pending, timeout=_POLL_S, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in finished:
                        done += future.result()
                        del todo[pending.pop(future)]
                        if progress is not None:
                            progress(done, total)
            except BrokenProcessPool as error:
                logger.warning("decoding the images in this process (workers failed: %s)", error)
                kill_pool(pool)
                pool = None
        for start, part in sorted(todo.items()):
            check_stop(stop_event, "decoding the images")
            done += _decode_into(images_path, start, part, config.image_size)
            if progress is not None:
                progress(done, total)
