"""The landmark experiment of the seed notebook as a typed, reusable piece.

A frozen :class:`ExperimentConfig` (JSON in, JSON out) becomes a :class:`LandmarkExperiment`:
the encoders, one estimator per (encoder, landmark) with one marginal q(landmark) shared
across encoders, the seed's model (``TransformedMIEstimator`` over a ``MultiMIEstimator``),
and the data loaders. Frozen encoders' features come from a :class:`FeatureCache`, so an
epoch after the first costs only the encoders that are being trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from mist_core import distributed
from mist_core._rng import seeded
from mist_core.data.celeba import CelebALandmarks
from mist_core.data.features import FeatureCache, WithFeatures, module_fingerprint
from mist_core.data.landmarks import LANDMARKS
from mist_core.data.stopping import PreparationStopped, check_stop
from mist_core.data.synthetic_faces import SyntheticFaces
from mist_core.distributions import conditional_transformed_normal, transformed_normal
from mist_core.encoders import ENCODER_PRESETS, build_encoder, encoder_availability
from mist_core.estimators import (
    CLUB,
    DoE,
    L1Out,
    MIEstimator,
    MultiMIEstimator,
    TransformedMIEstimator,
    parse_mi_name,
)
from mist_core.freeze import is_frozen
from mist_core.precision import PRECISIONS, resolve_precision
from mist_core.training import (
    Progress,
    ResumeFrom,
    TrainState,
    evaluate_mi,
    resolve_device,
    train_mi_estimator,
)

if TYPE_CHECKING:
    from mist_core.runs import Run

__all__ = [
    "DATASETS",
    "PRESETS",
    "REPRESENTATIONS",
    "LIMITS",
    "ExperimentConfig",
    "LandmarkExperiment",
    "PreparationStopped",
    "mi_table",
    "instantiate_estimators",
    "preset",
    "resize_images",
]

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "celeba")
#: The seed notebook's three representations.
REPRESENTATIONS = ("random_init", "pretrained", "finetuned")
#: Estimators that can be built per (encoder, landmark) pair from a density over y.
_GENERATIVE = ("doe", "club", "l1out")

#: The accepted range of each numeric config field, ``(low, high)`` inclusive (``lr``:
#: ``low`` excluded; ``valid_fraction``: ``high`` excluded). Images are at most aligned
#: CelebA's 218 x 178 (both datasets are drawn or stored at that size: larger only
#: upsamples); train and test sizes at most 1,000,000 images (memory is checked separately,
#: see :mod:`mist_core.resources`).
LIMITS: dict[str, tuple[float, float]] = {
    "train_size": (2, 1_000_000),
    "test_size": (2, 1_000_000),
    "valid_fraction": (0.0, 0.5),
    "image_height": (32, 218),
    "image_width": (32, 178),
    "hidden_dim": (1, 4096),
    "hidden_layers": (0, 8),
    "n_transforms": (1, 16),
    "batch_size": (2, 4096),
    "epochs": (1, 1000),
    "lr": (0.0, 1.0),
    "seed": (0, 2**32 - 1),
    "num_workers": (0, 64),
}
#: ``device`` values: auto, cpu, mps, cuda or cuda:N.
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:[0-9]{1,3})?)")


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is one (an integral float such as JSON's ``3.0`` too;
    never a bool), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def _exactly(value: Any, numbers: tuple[int | None, ...]) -> bool:
    """Whether ``value`` is already the tuple of plain ints ``numbers``."""
    return isinstance(value, tuple) and all(type(v) is int for v in value) and value == numbers


def _int_field(name: str, value: Any, *, optional: str = "") -> int | None:
    low, high = (int(x) for x in LIMITS[name])
    if value is None and optional:
        return None
    number = _integer(value)
    if number is None or not low <= number <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{optional}, got {value!r}")
    return number


def _float_field(name: str, value: Any) -> float:
    low, high = LIMITS[name]
    interval = f"({low:g}, {high:g}]" if name == "lr" else f"[{low:g}, {high:g})"
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    number = float(value) if ok else math.nan
    inside = low < number <= high if name == "lr" else low <= number < high
    if not (math.isfinite(number) and inside):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return number


def _str_field(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _bool_field(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _names_field(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # --set encoders=trained: one name
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of names, got {value!r}")
    return value if isinstance(value, tuple) else tuple(value)


def _image_size_field(name: str, value: Any) -> tuple[int, int]:
    (h_low, h_high), (w_low, w_high) = LIMITS["image_height"], LIMITS["image_width"]
    pair = tuple(value) if isinstance(value, list | tuple) and len(value) == 2 else ()
    numbers = tuple(_integer(v) for v in pair)
    if (
        len(numbers) != 2
        or numbers[0] is None
        or numbers[1] is None
        or not (h_low <= numbers[0] <= h_high and w_low <= numbers[1] <= w_high)
    ):
        raise ValueError(
            f"{name} must be (height, width) in pixels with height in [{h_low:g}, {h_high:g}] "
            f"and width in [{w_low:g}, {w_high:g}], got {value!r}"
        )
    return value if _exactly(value, numbers) else (numbers[0], numbers[1])


def _dims_field(name: str, value: Any) -> tuple[int, ...]:
    low, high = (int(x) for x in LIMITS["hidden_dim"])
    most = int(LIMITS["hidden_layers"][1])
    numbers = tuple(_integer(v) for v in value) if isinstance(value, list | tuple) else None
    if (
        numbers is None
        or len(numbers) > most
        or not all(n is not None and low <= n <= high for n in numbers)
    ):
        raise ValueError(
            f"{name} must be a list of at most {most} layer widths, each an integer in "
            f"[{low}, {high}], got {value!r}"
        )
    return value if _exactly(value, numbers) else numbers  # type: ignore[return-value]


def _device_field(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError(
            f"{name} must be one of auto, cpu, cuda, cuda:N (N = 0, 1...), mps; got {value!r}"
        )
    return value


def _celeba_root_field(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a folder path (a string) or None, got {value!r}")
    return value


_ALL_IMAGES = " (or None for all images)"
_FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "dataset": _str_field,
    "celeba_root": _celeba_root_field,
    "train_size": lambda n, v: _int_field(n, v, optional=_ALL_IMAGES),
    "test_size": lambda n, v: _int_field(n, v, optional=_ALL_IMAGES),
    "valid_fraction": _float_field,
    "image_size": _image_size_field,
    "encoders": _names_field,
    "landmarks": _names_field,
    "estimator": _str_field,
    "hidden_dims": _dims_field,
    "marginal_hidden_dims": _dims_field,
    "n_transforms": _int_field,
    "batch_size": _int_field,
    "epochs": _int_field,
    "lr": _float_field,
    "early_stopping": _bool_field,
    "device": _device_field,
    "precision": _str_field,
    "seed": _int_field,
    "feature_cache": _bool_field,
    "preload": _bool_field,
    "num_workers": _int_field,
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a landmark experiment. Units and meanings beside each field.

    Sizes count images; ``train_size=None`` takes the whole split (CelebA).
    """

    dataset: str = "synthetic"  # "synthetic" (drawn faces, offline) or "celeba"
    celeba_root: str | None = None  # folder that holds celeba/ (dataset="celeba")
    train_size: int | None = 2000  # images used for training (None: all)
    test_size: int | None = 500  # images held out for the MI estimate (None: all)
    valid_fraction: float = 0.1  # part of the training images used for early stopping
    image_size: tuple[int, int] = (64, 52)  # (height, width) the encoders see, pixels
    encoders: tuple[str, ...] = ("random_init", "pretrained", "finetuned")
    landmarks: tuple[str, ...] = LANDMARKS
    estimator: str = "doe"  # one of doe, club, l1out (a q(y|x) per pair)
    hidden_dims: tuple[int, ...] = (128, 64)  # q(landmark | representation) widths
    marginal_hidden_dims: tuple[int, ...] = (64,)  # q(landmark) widths
    n_transforms: int = 1  # flow layers per density
    batch_size: int = 64  # images per step
    epochs: int = 5  # passes over the training images
    lr: float = 5e-4  # Adam learning rate (heads and fine-tuned encoders)
    early_stopping: bool = False  # stop when the validation loss stops improving
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # trained encoders' training steps: "auto" (bfloat16 where
    # fast), "float32", "bfloat16"; evaluation is always float32 (mist_core.precision)
    seed: int = 0  # data subsets, initialisation and order
    feature_cache: bool = True  # reuse frozen encoders' features across epochs
    preload: bool = True  # decode and resize all images once, in memory
    num_workers: int = 0  # DataLoader workers (when not preloaded)

    def __post_init__(self) -> None:
        # JSON gives lists and may give 3.0 for 3: store tuples and ints, so the config stays
        # hashable and immutable and every field has its declared type.
        for name, value in self._checked_fields().items():
            if value is not getattr(self, name):
                object.__setattr__(self, name, value)
        self.validate()

    def _checked_fields(self) -> dict[str, Any]:
        """Every field checked on its own (type and range), converted where that is lossless."""
        return {name: check(name, getattr(self, name)) for name, check in _FIELD_CHECKS.items()}

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field, the value and the accepted values."""
        self._checked_fields()
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset == "celeba" and not self.celeba_root:
            raise ValueError("dataset='celeba' needs celeba_root: the folder that holds celeba/")
        unknown = [e for e in self.encoders if e not in ENCODER_PRESETS]
        if unknown or not self.encoders:
            raise ValueError(
                f"encoders must be a non-empty list of {', '.join(ENCODER_PRESETS)}; "
                f"unknown: {unknown}"
            )
        bad = [lm for lm in self.landmarks if lm not in LANDMARKS]
        if bad or not self.landmarks:
            raise ValueError(f"landmarks must be among {', '.join(LANDMARKS)}; unknown: {bad}")
        for name in ("encoders", "landmarks"):
            values = getattr(self, name)
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"{name} must not repeat a name; repeated: {twice}")
        if self.estimator not in _GENERATIVE:
            raise ValueError(
                f"estimator must be one of {', '.join(_GENERATIVE)} (they give posterior maps), "
                f"got {self.estimator!r}"
            )
        if self.dataset == "synthetic" and (self.train_size is None or self.test_size is None):
            raise ValueError("the synthetic dataset needs explicit train_size and test_size")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)} (the encoders' arithmetic; "
                f"'auto' is bfloat16 where the hardware is fast), got {self.precision!r}"
            )

    # --- JSON -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(
                f"unknown config field(s) {unknown}; valid fields: {', '.join(names)}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"the config is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError("the config must be a JSON object of fields")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        return cls.from_json(Path(path).read_text())

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


#: Ready-made configs. ``demo-cpu`` (the dashboard's default) needs nothing but this
#: package; ``seed`` is the
#: notebook's experiment (CelebA at full resolution, ImageNet weights, 20 epochs on a GPU).
PRESETS: dict[str, ExperimentConfig] = {
    "demo-cpu": ExperimentConfig(
        dataset="synthetic",
        train_size=2000,
        test_size=500,
        image_size=(64, 52),
        encoders=("random_init", "trained"),
        batch_size=64,
        epochs=6,
        lr=1e-3,
    ),
    "seed": ExperimentConfig(
        dataset="celeba",
        celeba_root="data",
        train_size=None,
        test_size=1000,
        image_size=(218, 178),
        encoders=("random_init", "pretrained", "finetuned"),
        batch_size=32,
        epochs=20,
        lr=5e-4,
        preload=False,
        num_workers=8,
    ),
}


def preset(name: str, **changes: Any) -> ExperimentConfig:
    """A preset config by name, with optional field changes."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]


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
        done = 0
        if isinstance(dataset, SyntheticFaces) and n > 0:
            # drawn in worker processes, then converted exactly as __getitem__ would
            self.targets = {name: torch.empty((n, 2)) for name in LANDMARKS}
            for drawn, marks in dataset.render_chunks(range(n), stop_event=stop_event):
                for start in range(0, len(drawn), batch_size):
                    chunk = torch.from_numpy(drawn[start : start + batch_size])
                    chunk = chunk.permute(0, 3, 1, 2).contiguous()
                    resized = resize_images(chunk.float().div_(255.0), image_size)
                    self.images[done + start : done + start + len(chunk)] = _to_uint8(resized)
                for name, value in marks.items():
                    self.targets[name][done : done + len(drawn)] = torch.from_numpy(value)
                done += len(drawn)
            return
        # every DataLoader here gets its own generator: an iterator draws its base seed from
        # it, and must not draw from torch's global one while another thread seeds that
        targets: dict[str, list[Tensor]] = {}
        for batch in DataLoader(
            dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()
        ):
            check_stop(stop_event, "preparing the images")
            images = batch["image"]
            self.images[done : done + len(images)] = _to_uint8(resize_images(images, image_size))
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


def _to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] -> uint8 (nearest grey level)."""
    return images.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


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


def resize_images(images: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[B, 3, H, W] -> [B, 3, *image_size]``, as the encoders resize (bilinear, antialiased)."""
    if tuple(images.shape[-2:]) == tuple(image_size):
        return images
    return F.interpolate(
        images, size=image_size, mode="bilinear", antialias=True, align_corners=False
    )


@dataclass
class LandmarkExperiment:
    """The seed's experiment built from a config.

    Attributes:
        config: the config it was built from.
        encoders: ``{name: module}``; frozen ones are frozen with :func:`mist_core.freeze`.
        estimator: the ``MultiMIEstimator`` of one estimator per (encoder, landmark).
        model: the seed's ``TransformedMIEstimator`` (images -> every encoder -> estimators),
            for posteriors and new images.
    """

    config: ExperimentConfig
    cache: FeatureCache | None = None
    #: ``{"train": ..., "test": ...}`` to reuse images already prepared for the same config.
    data: dict[str, Dataset] | None = None
    #: Set it to stop preparing images or features: :class:`PreparationStopped` is raised
    #: within about a second (training itself takes its own ``stop_event``).
    stop_event: threading.Event | None = None
    encoders: dict[str, nn.Module] = field(init=False)
    estimator: MultiMIEstimator = field(init=False)
    model: TransformedMIEstimator = field(init=False)
    _fingerprints: dict[str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        config = self.config
        for name in config.encoders:
            availability = encoder_availability(ENCODER_PRESETS[name])
            if not availability.available:
                raise FileNotFoundError(
                    f"encoder {name!r} is not available: {availability.reason}. "
                    f"{availability.how_to_enable}"
                )
        # Random weights come from torch's global generator: seed it and draw them with no
        # other thread building an experiment at the same time (a dashboard warms one up in
        # the background while a page loads another; interleaved draws would change both).
        with seeded(config.seed):
            self.encoders = {
                name: build_encoder(
                    ENCODER_PRESETS[name],
                    image_size=config.image_size,
                    precision=self.precision,
                )
                for name in config.encoders
            }
            estimators = instantiate_estimators(
                representations={name: enc.out_features for name, enc in self.encoders.items()},
                landmarks=config.landmarks,
                estimator=config.estimator,
                hidden_dims=config.hidden_dims,
                marginal_hidden_dims=config.marginal_hidden_dims,
                n_transforms=config.n_transforms,
            )
        self.estimator = MultiMIEstimator(estimators)
        self.model = TransformedMIEstimator(
            base_estimator=self.estimator,
            transforms_rename={("image", name): enc for name, enc in self.encoders.items()},
        )

    # --- checkpoints ----------------------------------------------------------------------

    @classmethod
    def from_run(cls, run: Run, which: str | int = "latest", **kwargs: Any) -> LandmarkExperiment:
        """Rebuild a run's experiment with the weights of one of its checkpoints (e.g. to
        evaluate it or draw posteriors). ``kwargs`` go to the constructor (``cache``...)."""
        experiment = cls(run.config(), **kwargs)
        experiment.restore(run, which)
        experiment.model.eval()
        return experiment

    def restore(self, run: Run, which: str | int = "latest") -> ResumeFrom:
        """Load a run's checkpoint into this experiment; returns where training resumes."""
        checkpoint = run.load_checkpoint(which)
        extra = checkpoint.extra or {}
        self.load_checkpoint_state(checkpoint.model_state, extra.get("frozen_fingerprints"))
        return ResumeFrom(
            step=checkpoint.step,
            epoch=checkpoint.epoch,
            batches_in_epoch=int(extra.get("batches_in_epoch", 0)),
            optimizer_state=checkpoint.optimizer_state,
        )

    def _frozen_prefixes(self) -> dict[str, str]:
        return {
            name: f"transforms.{name}." for name, enc in self.encoders.items() if is_frozen(enc)
        }

    def frozen_fingerprints(self) -> dict[str, str]:
        """``{encoder: weights hash}`` of the frozen encoders (rebuilt, not stored, on reload)."""
        if self._fingerprints is None:
            self._fingerprints = {
                name: module_fingerprint(self.encoders[name]) for name in self._frozen_prefixes()
            }
        return dict(self._fingerprints)

    def checkpoint_state(self) -> dict[str, Tensor]:
        """The model's state without the frozen encoders, which the config rebuilds exactly
        (seeded random init, or the ImageNet file); a checkpoint stays small and quick."""
        prefixes = tuple(self._frozen_prefixes().values())
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith(prefixes)}

    def load_checkpoint_state(
        self, state: Mapping[str, Tensor], frozen_fingerprints: Mapping[str, str] | None = None
    ) -> None:
        """Load a :meth:`checkpoint_state`; the rebuilt frozen encoders must be the same ones."""
        if frozen_fingerprints is not None:
            ours = self.frozen_fingerprints()
            changed = sorted(n for n, fp in frozen_fingerprints.items() if ours.get(n) != fp)
            if changed:
                raise ValueError(
                    f"the frozen encoder(s) {changed} rebuilt from the config differ from the "
                    "ones this checkpoint was trained with (other weights file or torch version?)"
                )
        result = self.model.load_state_dict(dict(state), strict=False)
        prefixes = tuple(self._frozen_prefixes().values())
        missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
        if missing or result.unexpected_keys:
            raise ValueError(
                "the checkpoint does not match this experiment's model: "
                f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    # --- data -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    @property
    def precision(self) -> str:
        """The trained encoders' arithmetic in training steps, ``"float32"`` or ``"bfloat16"``
        (``config.precision`` with ``"auto"`` resolved for :attr:`device`)."""
        return resolve_precision(self.config.precision, self.device)

    def datasets(self) -> dict[str, Dataset]:
        """``{"train": ..., "test": ...}`` image datasets (preloaded when configured: the
        training images now, the test images when first used).

        Raises:
            PreparationStopped: :attr:`stop_event` was set meanwhile (nothing is kept).
        """
        if self.data is None:
            self.data = self._build_datasets()
        return self.data

    def source_images(self, split: str) -> Dataset:
        """The ``split``'s images at their own resolution (218 x 178 for both datasets), with
        the landmarks in that frame; item ``i`` is image ``i`` of :meth:`datasets`."""
        c = self.config
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if c.dataset == "synthetic":
            assert c.train_size is not None and c.test_size is not None
            if split == "train":
                return SyntheticFaces(c.train_size, seed=c.seed)
            # a different seed stream for test images: no image is in both
            return SyntheticFaces(c.test_size, seed=c.seed + 1_000_003)
        assert c.celeba_root is not None
        size = c.train_size if split == "train" else c.test_size
        return _take(CelebALandmarks(c.celeba_root, split=split), size, c.seed)

    def _build_datasets(self) -> dict[str, Dataset]:
        c = self.config
        train, test = self.source_images("train"), self.source_images("test")
        if c.preload:
            train = _Preloaded(train, c.image_size, c.batch_size, self.stop_event)
            # the test images are needed only at the end: made on first use, then stopped by
            # the stop event of the experiment that uses them (the data may be shared)
            source = test
            test = _OnFirstUse(
                lambda stop: _Preloaded(source, c.image_size, c.batch_size, stop), len(test)
            )
        return {"train": train, "test": test}

    def _dataset(self, split: str) -> Dataset:
        """``datasets()[split]``, made now if it is made on first use (stoppable)."""
        dataset = self.datasets()[split]
        if isinstance(dataset, _OnFirstUse):
            dataset.dataset(self.stop_event)
        return dataset

    def fingerprint(self, split: str) -> str:
        """Identifies exactly the images of a split, for the disk feature cache."""
        c = self.config
        sizes = f"train={c.train_size},test={c.test_size},seed={c.seed}"
        source = (
            "synthetic"
            if c.dataset == "synthetic"
            else f"celeba:{Path(c.celeba_root or '').resolve()}"
        )
        return f"{source}|{sizes}|{split}|{tuple(c.image_size)}"

    def prepare(self, splits: Sequence[str] = ("train", "test")) -> None:
        """Make the images and the frozen encoders' features of ``splits`` now (training
        does it anyway; this lets a caller do it ahead of time, e.g. while a person reads
        the page).

        Raises:
            PreparationStopped: :attr:`stop_event` was set meanwhile.
        """
        self.datasets()
        for split in splits:
            self._dataset(split)
            self._features(split)

    def _features(self, split: str) -> dict[str, Tensor]:
        if not self.config.feature_cache:
            return {}
        cache = self.cache if self.cache is not None else FeatureCache()
        self.cache = cache
        dataset = self._dataset(split)
        fingerprints = self.frozen_fingerprints()
        return {
            name: cache.features(
                enc,
                dataset,
                self.fingerprint(split),
                extra=f"image_size={tuple(self.config.image_size)}",
                encoder_fingerprint=fingerprints[name],  # hashed once per experiment
                batch_size=self.config.batch_size,
                device=self.device,
                stop_event=self.stop_event,
            )
            for name, enc in self.encoders.items()
            if is_frozen(enc)
        }

    def training_model(self) -> TransformedMIEstimator | MultiMIEstimator:
        """The model that consumes cached features: only the trained encoders run."""
        if not self.config.feature_cache:
            return self.model
        live = {("image", n): e for n, e in self.encoders.items() if not is_frozen(e)}
        if not live:
            return self.estimator
        return TransformedMIEstimator(base_estimator=self.estimator, transforms_rename=live)

    def _split_indices(self) -> tuple[list[int], list[int]]:
        """Training and validation indices of the training images (fixed by the seed)."""
        n = len(self.datasets()["train"])  # type: ignore[arg-type]
        n_valid = int(round(n * self.config.valid_fraction))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        return sorted(order[n_valid:].tolist()), sorted(order[:n_valid].tolist())

    def loader(self, split: str, shuffle: bool | None = None) -> DataLoader:
        """Batches of ``"train"``, ``"valid"`` (part of the training images, see
        ``valid_fraction``) or ``"test"``, with cached frozen features when the cache is on.

        Under ``torchrun`` the training batches are sharded: each of the N processes gets
        ``batch_size / N`` images of every batch.
        """
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        source = "test" if split == "test" else "train"
        dataset: Dataset = self._dataset(source)
        tables = self._features(source)
        if tables:
            dataset = WithFeatures(dataset, tables)
        if split != "test" and self.config.valid_fraction > 0:
            train_idx, valid_idx = self._split_indices()
            dataset = Subset(dataset, train_idx if split == "train" else valid_idx)
        shuffle = (split == "train") if shuffle is None else shuffle
        workers = 0 if self.config.preload else self.config.num_workers
        world = distributed.world_size()
        if split == "train" and world > 1:
            if self.config.batch_size % world:
                raise ValueError(
                    f"batch_size {self.config.batch_size} must be divisible by the "
                    f"{world} processes"
                )
            sampler = DistributedSampler(
                dataset,
                num_replicas=world,
                rank=distributed.rank(),
                shuffle=shuffle,
                seed=self.config.seed,
            )
            return DataLoader(
                dataset,
                batch_size=self.config.batch_size // world,
                sampler=sampler,
                num_workers=workers,
                generator=torch.Generator().manual_seed(self.config.seed),
            )
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    # --- training and evaluation ----------------------------------------------------------

    def train(
        self,
        *,
        callback: Callable[[Progress], None] | None = None,
        stop_event: threading.Event | None = None,
        checkpoint: Callable[[TrainState], None] | None = None,
        resume: ResumeFrom | None = None,
        verbose: bool = False,
    ) -> pd.DataFrame:
        """Train every estimator (and the trained encoders) jointly; returns the long log.

        ``callback``, ``stop_event``, ``checkpoint`` and ``resume`` are passed to
        :func:`~mist_core.train_mi_estimator`; for ``resume``, load :attr:`model`'s weights
        first.
        """
        c = self.config
        self.model.to(self.device)
        start = time.perf_counter()
        train_loader = self.loader("train")
        setup_s = time.perf_counter() - start
        valid_loader = self.loader("valid") if c.valid_fraction > 0 else None
        log = train_mi_estimator(
            self.training_model(),
            train_loader,
            valid_data=valid_loader,
            valid_percentage=0.0,
            max_epochs=c.epochs,
            lr=c.lr,
            early_stopping=c.early_stopping,
            device=self.device,
            seed=c.seed,
            callback=callback,
            stop_event=stop_event,
            checkpoint=checkpoint,
            resume=resume,
            verbose=verbose,
        )
        log.attrs["setup_s"] = setup_s
        return log

    def evaluate(self, split: str = "test") -> pd.DataFrame:
        """The MI table on a split: one row per (encoder, landmark) with its standard error."""
        values, errors = evaluate_mi(
            self.training_model(),
            self.loader(split, shuffle=False),
            device=self.device,
            return_std_error=True,
        )
        if not isinstance(values, dict):  # a single pair
            only = f"I({self.config.encoders[0]};{self.config.landmarks[0]})"
            values, errors = {only: values}, {only: errors}
        return mi_table(values, errors)


def instantiate_estimators(
    representations: Mapping[str, int] | Sequence[str] = REPRESENTATIONS,
    landmarks: Sequence[str] = LANDMARKS,
    *,
    estimator: str = "doe",
    hidden_dims: Sequence[int] = (128, 64),
    marginal_hidden_dims: Sequence[int] = (64,),
    n_transforms: int = 1,
) -> dict[tuple[str, str], MIEstimator]:
    """The seed's helper: one estimator per (representation, landmark), in landmark-major order.

    Args:
        representations: names (512-d each, as ResNet18) or ``{name: feature size}``.
        landmarks: the targets, 2-d pixel coordinates each.
        estimator: ``"doe"`` (the seed's), ``"club"`` or ``"l1out"``.

    Every pair gets its own q(landmark | representation); DoE pairs of the same landmark
    share one q(landmark).
    """
    if estimator not in _GENERATIVE:
        raise ValueError(f"estimator must be one of {', '.join(_GENERATIVE)}, got {estimator!r}")
    if not isinstance(representations, Mapping):
        representations = {name: 512 for name in representations}
    estimators: dict[tuple[str, str], MIEstimator] = {}
    for landmark in landmarks:
        q_y = transformed_normal(2, hidden_dims=marginal_hidden_dims, n_transforms=n_transforms)
        for name, z_dim in representations.items():
            q_y_given_x = conditional_transformed_normal(
                2, context_dim=z_dim, hidden_dims=hidden_dims, n_transforms=n_transforms
            )
            if estimator == "doe":
                estimators[(name, landmark)] = DoE(q_Y_given_X=q_y_given_x, q_Y=q_y)
            elif estimator == "club":
                estimators[(name, landmark)] = CLUB(q_y_given_x)
            else:
                estimators[(name, landmark)] = L1Out(q_y_given_x)
    return estimators


def _take(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= n:
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]
    return Subset(dataset, sorted(order.tolist()))


def mi_table(values: Mapping[str, float], errors: Mapping[str, float]) -> pd.DataFrame:
    """``{"I(enc;landmark)": nats}`` -> DataFrame with encoder, landmark, mi, std_error."""
    rows = []
    for name, value in values.items():
        encoder, landmark = parse_mi_name(name)
        rows.append(
            {"encoder": encoder, "landmark": landmark, "mi": value, "std_error": errors[name]}
        )
    return pd.DataFrame(rows)
