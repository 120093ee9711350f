"""The words the dashboard shows for mist_core's names: one table, used by every page.

Encoders and landmarks have a long label (pickers, tables, bar legends: one name alone, with
what makes it differ) and a short one (curve legends, plot titles, run lists: several names
side by side, where the long ones would not fit). A name missing from a table is shown as
it is, so a new encoder or landmark in mist_core never breaks a page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ARITHMETIC",
    "ENCODERS",
    "ESTIMATORS",
    "FACES",
    "LANDMARKS",
    "POSTERIOR_STYLES",
    "SCHEDULES",
    "Label",
    "encoder",
    "encoder_help",
    "encoder_short",
    "landmark",
    "landmark_short",
    "pair",
]


@dataclass(frozen=True)
class Label:
    """How one name is shown: ``long`` alone, ``short`` beside others, ``help`` on hover."""

    long: str
    short: str
    help: str = ""


ENCODERS: Mapping[str, Label] = {
    "random_init": Label(
        "Random init (frozen)",
        "Random init",
        "A ResNet18 with random weights, never trained: the baseline.",
    ),
    "pretrained": Label(
        "ImageNet-pretrained (frozen)",
        "ImageNet-pretrained",
        "A ResNet18 trained on ImageNet photos, kept as it is.",
    ),
    "finetuned": Label(
        "Fine-tuned from ImageNet",
        "Fine-tuned from ImageNet",
        "The ImageNet ResNet18, trained further here to find the landmarks.",
    ),
    "trained": Label(
        "Trained from scratch",
        "Trained from scratch",
        "A ResNet18 trained here from random weights to find the landmarks "
        "(works offline; the stand-in for fine-tuning when ImageNet weights are missing).",
    ),
}

LANDMARKS: Mapping[str, Label] = {
    "left_eye": Label("Left eye", "Left eye"),
    "right_eye": Label("Right eye", "Right eye"),
    "nose": Label("Nose", "Nose"),
    "left_mouth": Label("Left mouth corner", "Left mouth corner"),
    "right_mouth": Label("Right mouth corner", "Right mouth corner"),
}

#: ExperimentConfig.estimator choices.
ESTIMATORS: Mapping[str, str] = {
    "doe": "DoE (difference of entropies, default)",
    "club": "CLUB (an upper bound)",
    "l1out": "L1Out (leave one out)",
}

#: ExperimentConfig.precision choices.
#: The learning-rate schedules (mist_core.training.schedule), as a person reads them.
SCHEDULES: Mapping[str, str] = {
    "one-cycle": "Warm up, then slow down (one-cycle)",
    "constant": "Constant",
}

ARITHMETIC: Mapping[str, str] = {
    "auto": "Automatic (16-bit where fast)",
    "float32": "32-bit (exact, reproducible)",
    "bfloat16": "16-bit (bfloat16)",
}

#: ExperimentConfig.dataset choices.
FACES: Mapping[str, str] = {
    "synthetic": "Built-in drawn faces (no download)",
    "celeba": "CelebA photos (a folder on this computer)",
}

#: How a posterior map is drawn (charts.posterior_figure's ``style``).
POSTERIOR_STYLES: Mapping[str, str] = {
    "regions": "50% / 90% regions",
    "heatmap": "Heat map",
}


def _label(table: Mapping[str, Label], name: str) -> Label:
    return table.get(name) or Label(name, name)


def encoder(name: str) -> str:
    """The encoder's long label, e.g. ``"Random init (frozen)"``."""
    return _label(ENCODERS, name).long


def encoder_short(name: str) -> str:
    """The encoder's short label, e.g. ``"Random init"``."""
    return _label(ENCODERS, name).short


def encoder_help(name: str) -> str | None:
    """What the encoder is, in a sentence (``None`` when there is nothing to say)."""
    return _label(ENCODERS, name).help or None


def landmark(name: str) -> str:
    """The landmark's long label, e.g. ``"Left mouth corner"``."""
    return _label(LANDMARKS, name).long


def landmark_short(name: str) -> str:
    """The landmark's short label (landmark names are short enough: the long one)."""
    return _label(LANDMARKS, name).short


def pair(encoder_name: str, landmark_name: str) -> str:
    """One (encoder, landmark) pair in a legend: ``"Random init · Nose"``."""
    return f"{encoder_short(encoder_name)} · {landmark_short(landmark_name)}"
