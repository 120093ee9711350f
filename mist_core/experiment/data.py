"""The experiment's images: the source datasets of a config, kept decoded and resized in
memory (:class:`_Preloaded`), or for CelebA without ``preload`` decoded once into the image
store on disk (:mod:`mist_core.data.store`: a uint8 memory map reused across runs, so no
epoch decodes a JPEG); the test images made on first use (:class:`_OnFirstUse`).

Both datasets are drawn or stored at aligned CelebA's 218 x 178 with the landmarks in that
frame; the encoders see them at ``config.image_size``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from mist_core._rng import seeded_permutation
from mist_core.data.celeba import CelebALandmarks
from mist_core.data.face_cache import drawing_code_hash, load_drawn, save_drawn
from mist_core.data.images import resize_images, to_uint8
from mist_core.data.landmarks import LANDMARKS
from mist_core.data.stopping import check_stop
from mist_core.data.store import StoreConfig, open_store
from mist_core.data.synthetic_faces import SyntheticFaces
from mist_core.experiment.config import ExperimentConfig

__all__ = ["build_datasets", "images_fingerprint", "source_images", "train_valid_indices"]

#: Added to the seed of the drawn test faces: a seed stream of its own, so that no image is
#: in both splits.
_TEST_SEED_OFFSET = 1_000_003


def source_images(config: ExperimentConfig, split: str) -> Dataset:
    """The ``split``'s images at their own resolution, with the landmarks in that frame."""
    c = config
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if c.dataset == "synthetic":
        assert c.train_size is not None and c.test_size is not None
        if split == "train":
            return SyntheticFaces(c.train_size, seed=c.seed)
        return SyntheticFaces(c.test_size, seed=c.seed + _TEST_SEED_OFFSET)
    assert c.celeba_root is not None
    size = c.train_size if split == "train" else c.test_size
    return _take(CelebALandmarks(c.celeba_root, split=split), size, c.seed)


def train_valid_indices(n: int, valid_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The training and validation indices of ``n`` training images, fixed by the seed
    (``round(n * valid_fraction)`` of them validate), each sorted."""
    n_valid = int(round(n * valid_fraction))
    order = seeded_permutation(n, seed)
    return sorted(order[n_valid:].tolist()), sorted(order[:n_valid].tolist())


def build_datasets(
    config: ExperimentConfig, stop_event: threading.Event | None = None
) -> dict[str, Dataset]:
    """``{"train": ..., "test": ...}``: with ``config.preload`` the training images decoded
    and resized now, the test images on first use; CelebA without it, the same from the
    image store on disk (built on first use of a dataset and size, then reused by every
    run); drawn faces without it, the source datasets.

    Raises:
        PreparationStopped: ``stop_event`` was set while preloading or storing.
    """
    c = config
    train, test = source_images(c, "train"), source_images(c, "test")
    if c.dataset == "celeba" and not c.preload:
        store = StoreConfig(tuple(c.image_size))  # type: ignore[arg-type]
        train = open_store(train, store, stop_event=stop_event)
        source = test
        test = _OnFirstUse(lambda stop: open_store(source, store, stop_event=stop), len(test))
    elif c.preload:
        train = _Preloaded(train, c.image_size, c.batch_size, stop_event)
        # the test images are needed only at the end: made on first use, then stopped by
        # the stop event of the experiment that uses them (the data may be shared)
        source = test
        test = _OnFirstUse(
            lambda stop: _Preloaded(source, c.image_size, c.batch_size, stop), len(test)
        )
    return {"train": train, "test": test}


def images_fingerprint(config: ExperimentConfig, split: str) -> str:
    """Identifies exactly the images of a split (at the encoders' size), for the disk cache."""
    c = config
    sizes = f"train={c.train_size},test={c.test_size},seed={c.seed}"
    source = (
        f"synthetic:{drawing_code_hash()}"  # features kept on disk follow the drawing code
        if c.dataset == "synthetic"
        else f"celeba:{Path(c.celeba_root or '').resolve()}"
    )
    return f"{source}|{sizes}|{split}|{tuple(c.image_size)}"


def _take(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """``size`` items of ``dataset`` chosen by ``seed``, in their original order."""
    n = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= n:
        return dataset
    return Subset(dataset, sorted(seeded_permutation(n, seed)[:size].tolist()))


class _Preloaded(Dataset):
    """All items decoded once and resized to the encoders' input size, kept as uint8
    ``images [N, 3, H, W]`` (a quarter of float32's memory); an item's ``"image"`` is float32
    ``[3, H, W]`` in [0, 1] again, as the source dataset gives it (within half a grey level).

    Made a bounded chunk at a time (drawn, or decoded, then resized and stored), so memory
    is the result plus one chunk. ``stop_event`` set meanwhile raises
    :class:`PreparationStopped` within about a second.
    """

    def __init__(
        self,
        dataset: Dataset,
        image_size: tuple[int, int],
        batch_size: int = 64,
        stop_event: threading.Event | None = None,
    ) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        self.images = torch.empty((n, 3, *image_size), dtype=torch.uint8)
        self.targets: dict[str, Tensor] = {}
        if isinstance(dataset, SyntheticFaces) and n > 0:
            self._draw(dataset, image_size, batch_size, stop_event)
        else:
            self._decode(dataset, image_size, batch_size, stop_event)

    def _draw(
        self,
        faces: SyntheticFaces,
        image_size: tuple[int, int],
        batch_size: int,
        stop_event: threading.Event | None,
    ) -> None:
        """Drawn in worker processes, then converted exactly as ``faces[i]`` would be; kept
        on disk for the next run with the same faces (:mod:`mist_core.data.face_cache`)."""
        saved = load_drawn(faces, image_size)
        if saved is not None:
            self.images, self.targets = saved
            return
        n = len(faces)
        self.targets = {name: torch.empty((n, 2)) for name in LANDMARKS}
        done = 0
        for drawn, marks in faces.render_chunks(range(n), stop_event=stop_event):
            for start in range(0, len(drawn), batch_size):
                chunk = torch.from_numpy(drawn[start : start + batch_size])
                chunk = chunk.permute(0, 3, 1, 2).contiguous()
                resized = resize_images(chunk.float().div_(255.0), image_size)
                self.images[done + start : done + start + len(chunk)] = to_uint8(resized)
            for name, value in marks.items():
                self.targets[name][done : done + len(drawn)] = torch.from_numpy(value)
            done += len(drawn)
        save_drawn(faces, image_size, self.images, self.targets)

    def _decode(
        self,
        dataset: Dataset,
        image_size: tuple[int, int],
        batch_size: int,
        stop_event: threading.Event | None,
    ) -> None:
        # every DataLoader here gets its own generator: an iterator draws its base seed from
        # it, and must not draw from torch's global one while another thread seeds that
        targets: dict[str, list[Tensor]] = {}
        done = 0
        for batch in DataLoader(
            dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()
        ):
            check_stop(stop_event, "preparing the images")
            images = batch["image"]
            self.images[done : done + len(images)] = to_uint8(resize_images(images, image_size))
            done += len(images)
            for name, value in batch.items():
                if name != "image":
                    targets.setdefault(name, []).append(value)
        self.targets = {name: torch.cat(chunks) for name, chunks in targets.items()}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = self.images[index].float().div_(255.0)
        return {"image": image, **{k: v[index] for k, v in self.targets.items()}}


class _OnFirstUse(Dataset):
    """A dataset built the first time an item is asked for (thread-safe); its length is
    known before. ``build(stop_event)`` makes it; a stopped build is redone on next use."""

    def __init__(self, build: Callable[[threading.Event | None], Dataset], length: int) -> None:
        self._build, self._length = build, length
        self._dataset: Dataset | None = None
        self._lock = threading.Lock()

    def dataset(self, stop_event: threading.Event | None = None) -> Dataset:
        with self._lock:
            if self._dataset is None:
                self._dataset = self._build(stop_event)
            return self._dataset

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.dataset()[index]
