"""The faces a calibration scores: a split's faces in batches, each with every encoder's
representation and the true landmarks (:func:`face_batches`).

Where the experiment keeps its images prepared at the encoders' input size (``preload``,
or CelebA's image store), the batches are the experiment's own: its stored images (no face
drawn or decoded again), the frozen encoders' features from its feature cache (no forward
pass), and only the trained encoders run. Otherwise each face is made at its own resolution
(drawn faces ahead in worker processes) and every encoder runs on it, as the Posteriors page
does with one face. The two agree up to the stored images' rounding to whole grey levels.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from mist_core.data.landmarks import CELEBA_SIZE
from mist_core.data.synthetic_faces import SyntheticFaces
from mist_core.experiment.data import train_valid_indices
from mist_core.experiment.model import LandmarkExperiment

__all__ = ["FaceBatch", "count_faces", "face_batches", "holds_out", "split_faces"]


@dataclass(frozen=True)
class FaceBatch:
    """``features {encoder: [B, D]}``, ``truths {landmark: [B, 2]}`` (pixels of the source
    frame, ``(x, y)``) and that frame's ``(height, width)``, the grid a map is drawn on."""

    features: dict[str, Tensor]
    truths: dict[str, Tensor]
    frame: tuple[int, int]

    def __len__(self) -> int:
        return len(next(iter(self.truths.values())))


@torch.no_grad()
def face_batches(
    experiment: LandmarkExperiment, split: str, n: int, batch_size: int
) -> Iterator[FaceBatch]:
    """The first ``n`` faces of ``split`` (``"test"``, ``"valid"`` or ``"train"``), up to
    ``batch_size`` at a time, in order, with the model's encoders in evaluation mode (the
    caller sets it). Closing the iterator stops any drawing workers at once."""
    if experiment.images_stored:
        yield from _prepared_batches(experiment, split, n, batch_size)
        return
    names = list(experiment.config.encoders)
    landmarks = experiment.config.landmarks
    transforms = experiment.model.transforms
    device = next(experiment.model.parameters()).device
    source = _source_batches(split_faces(experiment, split), n, batch_size, landmarks)
    with contextlib.closing(source):  # (stops drawing at once on a stop)
        for images, truths in source:
            images = images.to(device)
            features = {name: transforms[name](images) for name in names}
            frame = (int(images.shape[-2]), int(images.shape[-1]))
            yield FaceBatch(features, {k: v.to(device) for k, v in truths.items()}, frame)


def count_faces(experiment: LandmarkExperiment, split: str) -> int:
    """How many faces :func:`face_batches` can give for ``split``."""
    if experiment.images_stored:
        _check_holds_out(experiment, split)
        return len(experiment.loader(split, shuffle=False).dataset)  # type: ignore[arg-type]
    return len(split_faces(experiment, split))  # type: ignore[arg-type]


def _check_holds_out(experiment: LandmarkExperiment, split: str) -> None:
    if split == "valid" and not holds_out(experiment):
        raise ValueError("this experiment holds no faces out for validation (valid_fraction=0)")


def holds_out(experiment: LandmarkExperiment) -> bool:
    """Whether some training faces are held out for validation."""
    config = experiment.config
    n = len(experiment.source_images("train"))  # type: ignore[arg-type]
    return bool(train_valid_indices(n, config.valid_fraction, config.seed)[1])


def _prepared_batches(
    experiment: LandmarkExperiment, split: str, n: int, batch_size: int
) -> Iterator[FaceBatch]:
    """The experiment's stored images and cached features, ``batch_size`` faces a batch."""
    _check_holds_out(experiment, split)
    dataset = experiment.loader(split, shuffle=False).dataset
    device = next(experiment.model.parameters()).device
    transforms = experiment.model.transforms
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        images = batch["image"].to(device)
        features = {
            name: batch[name].to(device) if name in batch else transforms[name](images)
            for name in experiment.config.encoders
        }
        truths = {name: batch[name].float().to(device) for name in experiment.config.landmarks}
        yield FaceBatch(features, truths, CELEBA_SIZE)


def split_faces(experiment: LandmarkExperiment, split: str) -> Dataset:
    """A split's faces at their own resolution (``"valid"``: the training faces held out)."""
    if split != "valid":
        return experiment.source_images(split)
    _check_holds_out(experiment, split)
    config = experiment.config
    train = experiment.source_images("train")
    n = len(train)  # type: ignore[arg-type]
    return Subset(train, train_valid_indices(n, config.valid_fraction, config.seed)[1])


def _source_batches(
    faces: Dataset, n: int, batch_size: int, landmarks: Sequence[str]
) -> Iterator[tuple[Tensor, Mapping[str, Tensor]]]:
    """The first ``n`` faces, up to ``batch_size`` at a time, in order: ``images [B, 3, H, W]``
    and ``{landmark: [B, 2]}``, the same tensors as ``faces[i]`` gives (a batch is cut where
    the image size changes).

    Drawn faces (:class:`SyntheticFaces`, or a subset of them) are drawn ahead in worker
    processes (:meth:`SyntheticFaces.render_chunks`) while this process evaluates a batch;
    closing the iterator kills them."""
    source, indices = faces, list(range(n))
    if isinstance(faces, Subset) and isinstance(faces.dataset, SyntheticFaces):
        source, indices = faces.dataset, [int(faces.indices[i]) for i in indices]
    if isinstance(source, SyntheticFaces):
        for drawn, marks in source.render_chunks(indices, chunk_size=batch_size):
            # as SyntheticFaces.__getitem__ converts them
            images = torch.from_numpy(drawn).permute(0, 3, 1, 2).float().div_(255.0)
            yield images, {name: torch.from_numpy(marks[name]).float() for name in landmarks}
        return
    for start in range(0, n, batch_size):
        items = [faces[index] for index in range(start, min(n, start + batch_size))]
        for _, run in itertools.groupby(items, key=lambda item: tuple(item["image"].shape)):
            batch = list(run)
            images = torch.stack([item["image"] for item in batch])
            truths = {
                name: torch.stack([torch.as_tensor(item[name]) for item in batch]).float()
                for name in landmarks
            }
            yield images, truths
