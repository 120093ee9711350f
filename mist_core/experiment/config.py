"""The landmark experiment's config: :class:`ExperimentConfig`, its field checks and limits,
and the ready-made :data:`PRESETS`.

A config is frozen and JSON in, JSON out; every field is checked on construction, so a config
read from a file, a form or ``--set key=value`` is either valid or a ``ValueError`` that names
the field, the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mist_core.data.landmarks import CELEBA_HEIGHT, CELEBA_SIZE, CELEBA_WIDTH, LANDMARKS
from mist_core.encoders import ENCODER_PRESETS
from mist_core.estimators import CONDITIONAL_DENSITY_ESTIMATORS, check_estimator_name
from mist_core.precision import PRECISIONS
from mist_core.training.schedule import check_schedule_name

__all__ = [
    "DATASETS",
    "LIMITS",
    "PRESETS",
    "REPRESENTATIONS",
    "ExperimentConfig",
    "preset",
]

DATASETS = ("synthetic", "celeba")
#: The seed notebook's three representations.
REPRESENTATIONS = ("random_init", "pretrained", "finetuned")
#: Why the experiment takes only estimators made of densities (said when another is asked for).
_ESTIMATOR_REASON = " (the experiment's posterior maps need a density q(landmark | encoder))"

#: The accepted range of each numeric config field, ``(low, high)`` inclusive (``lr``:
#: ``low`` excluded; ``valid_fraction``: ``high`` excluded). Images are at most aligned
#: CelebA's 218 x 178 (both datasets are drawn or stored at that size: larger only
#: upsamples); train and test sizes at most 1,000,000 images (memory is checked separately,
#: see :mod:`mist_core.resources`).
LIMITS: dict[str, tuple[float, float]] = {
    "train_size": (2, 1_000_000),
    "test_size": (2, 1_000_000),
    "valid_fraction": (0.0, 0.5),
    "image_height": (32, CELEBA_HEIGHT),
    "image_width": (32, CELEBA_WIDTH),
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
    "lr_schedule": _str_field,
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
    lr_schedule: str = "constant"  # "constant" or "one-cycle" (warm-up, then a fall to ~0;
    # mist_core.training.schedule)
    early_stopping: bool = False  # stop when the validation loss stops improving
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # trained encoders' training steps: "auto" (bfloat16 where
    # fast), "float32", "bfloat16"; evaluation is always float32 (mist_core.precision)
    seed: int = 0  # data subsets, initialisation and order
    feature_cache: bool = True  # reuse frozen encoders' features across epochs
    preload: bool = True  # decode and resize all images once, in memory (CelebA without
    # it: once ever, into the image store on disk, mist_core.data.store)
    num_workers: int = 0  # DataLoader workers (drawn faces when not preloaded)

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
        check_estimator_name(self.estimator, CONDITIONAL_DENSITY_ESTIMATORS, _ESTIMATOR_REASON)
        if self.dataset == "synthetic" and (self.train_size is None or self.test_size is None):
            raise ValueError("the synthetic dataset needs explicit train_size and test_size")
        check_schedule_name(self.lr_schedule)
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
        # 1800 faces to train on; 1200 held out (the validation curves, and the faces that
        # fit the posterior regions' recalibration, mist_core.calibration) and 1200 test
        # faces: with fewer, a region's coverage is too noisy to check to +/-3% at 90%
        train_size=3000,
        valid_fraction=0.4,
        test_size=1200,
        image_size=(64, 52),
        encoders=("random_init", "trained"),
        # 4 epochs of 57 steps with a one-cycle learning rate: the trained network's test MI
        # (mean of the 5 landmarks, seeds 0/1/2, float32) 1.54/1.57/1.60 nats, against
        # 1.22/1.60/1.33 for 6 epochs of 29 steps at a constant 1e-3, in 2/3 of the images
        # (bench/README.md). As the rate falls, the eval-mode network settles: at a constant
        # rate it scored 0.26 nats on held-out faces after epoch 6 and 1.22 after epoch 5.
        batch_size=32,
        epochs=4,
        lr=1e-3,
        lr_schedule="one-cycle",
        # the held-out faces' best epoch is kept (patience 5 never stops 4 epochs early)
        early_stopping=True,
    ),
    "seed": ExperimentConfig(
        dataset="celeba",
        celeba_root="data",
        train_size=None,
        test_size=1000,
        image_size=CELEBA_SIZE,
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
