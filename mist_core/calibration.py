"""Do the posterior regions mean what they claim? Coverage of highest-density regions.

A density q over the pixels draws its alpha highest-density (HPD) region: the pixels of
highest density holding a fraction alpha of its mass (:func:`mist_core.posterior.hpd_thresholds`).
The regions are *calibrated* when, over many faces, the true landmark falls inside the
alpha-region a fraction alpha of the time, for every alpha.

One number per face says it all: the **HPD rank** of the truth, the mass of the pixels whose
density exceeds the density at the truth (:func:`hpd_rank`). The truth lies inside the
alpha-region exactly when its rank is below alpha, so the coverage at every level comes
from the ranks of the test faces (:func:`coverage`), each with its binomial standard error.
Under calibration the ranks are uniform on [0, 1].

:func:`evaluate_calibration` measures it for a trained experiment over its test faces, on
the same pixel grids the Posteriors page draws, for the marginal q(landmark) and each
encoder's q(landmark | representation); with the mean negative log-density of the truth and
the median distance from the most likely pixel to the truth.

Where the regions are not calibrated, :class:`Recalibration` corrects them from the ranks of
faces held out for validation (:func:`fit_recalibration`): to draw a region that holds the
truth a fraction alpha of the time, draw the HPD region of mass :meth:`Recalibration.mass`
(alpha) instead (a conformal adjustment: with n validation faces exchangeable with the
test faces, the coverage is at least alpha and above it by at most about 1 / n). The
densities, and the MI estimated from them, are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mist_core.experiment import LandmarkExperiment
from mist_core.experiment.data import train_valid_indices
from mist_core.posterior import encode, landmark_maps

__all__ = [
    "LEVELS",
    "Calibration",
    "Coverage",
    "Recalibration",
    "coverage",
    "evaluate_calibration",
    "fit_recalibration",
    "hpd_rank",
]

#: The nominal levels a calibration table reports.
LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def hpd_rank(log_prob: np.ndarray, log_prob_at_truth: float) -> float:
    """The mass of the grid's pixels with a higher density than the truth's: the truth lies
    inside every HPD region of a larger mass, and outside the others.

    Args:
        log_prob: ``[H, W]`` (or any shape) log-density on the pixel grid, as the pages draw
            it; normalised here over the grid, one pixel being one unit of area.
        log_prob_at_truth: the log-density at the true position, on the same scale.

    Returns:
        A number in [0, 1]: 0 when the truth is at the mode, near 1 far in the tails (1 when
        the truth is less likely than every pixel).
    """
    flat = np.asarray(log_prob, dtype=np.float64).ravel()
    if flat.size == 0:
        raise ValueError("log_prob is empty: a grid of at least one pixel is needed")
    if not math.isfinite(log_prob_at_truth):
        return 1.0 if log_prob_at_truth < 0 else 0.0
    top = flat.max()
    probs = np.exp(flat - top)
    return float(probs[flat > log_prob_at_truth].sum() / probs.sum())


@dataclass(frozen=True)
class Coverage:
    """How often the ``level`` HPD region held the truth: ``observed`` of ``n`` faces, with
    the binomial standard error of that fraction."""

    level: float
    observed: float
    std_error: float
    n: int

    @property
    def gap(self) -> float:
        """``observed - level``: positive when the regions are too wide (underconfident)."""
        return self.observed - self.level


def _checked_ranks(ranks: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(ranks, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no HPD ranks: evaluate at least one face")
    if np.any(~np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError("HPD ranks must lie in [0, 1] (see hpd_rank)")
    return values


def coverage(
    ranks: Sequence[float] | np.ndarray,
    levels: Sequence[float] = LEVELS,
    recalibration: Recalibration | None = None,
) -> list[Coverage]:
    """The observed coverage at each nominal level, from the HPD ranks of ``n`` faces.

    The truth is inside the ``level`` region when its rank is below ``level`` (as the
    region of :func:`mist_core.posterior.hpd_thresholds` is drawn), or below
    ``recalibration.mass(level)`` when the regions are drawn recalibrated. The standard
    error is that of a binomial fraction, ``sqrt(p (1 - p) / n)`` at the nominal
    ``p = level`` (the spread the observed fraction has when the regions are calibrated).

    Raises:
        ValueError: no ranks, a rank outside [0, 1], or a level outside (0, 1).
    """
    values = _checked_ranks(ranks)
    n = int(values.size)
    out = []
    for level in levels:
        if not 0.0 < level < 1.0:
            raise ValueError(f"coverage levels must lie in (0, 1), got {level}")
        mass = level if recalibration is None else recalibration.mass(level)
        observed = float(np.mean(values < mass))
        out.append(Coverage(level, observed, math.sqrt(level * (1.0 - level) / n), n))
    return out


@dataclass(frozen=True)
class Recalibration:
    """The HPD masses to draw so that the regions hold the truth as often as they say,
    fitted on the sorted HPD ranks of validation faces (:func:`fit_recalibration`)."""

    ranks: tuple[float, ...]

    def mass(self, level: float) -> float:
        """The mass of the HPD region to draw for a region that holds the truth a fraction
        ``level`` of the time: just above the ``ceil((n + 1) level)``-th smallest validation
        rank (1, the whole grid, when there are too few faces for that level)."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"levels must lie in (0, 1), got {level}")
        k = math.ceil((len(self.ranks) + 1) * level)
        if k > len(self.ranks):
            return 1.0
        return min(1.0, float(np.nextafter(self.ranks[k - 1], 2.0)))


def fit_recalibration(ranks: Sequence[float] | np.ndarray) -> Recalibration:
    """A :class:`Recalibration` from the HPD ranks of validation faces (never test faces).

    Raises:
        ValueError: no ranks, or a rank outside [0, 1].
    """
    return Recalibration(tuple(float(r) for r in np.sort(_checked_ranks(ranks))))


@dataclass(frozen=True)
class Calibration:
    """How one density's posterior regions did over ``n`` faces.

    ``encoder`` is ``None`` for the marginal q(landmark). ``nll`` is the mean of
    ``-log q(truth)`` (nats, per pixel of area); ``median_distance`` the median distance in
    pixels from the most likely pixel centre to the truth; ``ranks`` the faces' HPD ranks.
    """

    encoder: str | None
    landmark: str
    coverage: tuple[Coverage, ...]
    nll: float
    median_distance: float
    ranks: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.ranks)


def evaluate_calibration(
    experiment: LandmarkExperiment,
    split: str = "test",
    *,
    levels: Sequence[float] = LEVELS,
    max_faces: int | None = None,
) -> list[Calibration]:
    """The calibration of every density of a trained experiment over a split's faces.

    ``split`` is ``"test"``, ``"train"`` or ``"valid"`` (the training faces the experiment
    holds out for validation: where a :class:`Recalibration` is fitted). Each face is
    encoded once at its own resolution (218 x 178), and every landmark's maps are drawn over
    its pixel grid as the Posteriors page draws them (:func:`mist_core.posterior.landmark_maps`).

    Returns:
        One :class:`Calibration` per landmark and density: the marginal first, then the
        encoders, in the config's order.
    """
    faces = _faces(experiment, split)
    n = len(faces) if max_faces is None else min(max_faces, len(faces))
    if n < 1:
        raise ValueError(f"the {split!r} split has no faces to evaluate")
    names = list(experiment.config.encoders)
    found: dict[tuple[str | None, str], list[tuple[float, float, float]]] = {}
    model = experiment.model
    was_training = model.training
    model.eval()
    try:
        for index in range(n):
            item = faces[index]
            image = item["image"]
            size = (int(image.shape[-2]), int(image.shape[-1]))
            features = encode(experiment, image, names)
            for landmark in experiment.config.landmarks:
                truth = torch.as_tensor(item[landmark], dtype=torch.float32)
                for m in landmark_maps(experiment, features, landmark, size, truth, ()):
                    assert m.log_prob_at_truth is not None
                    distance = math.dist(m.mode, (float(truth[0]), float(truth[1])))
                    found.setdefault((m.encoder, landmark), []).append(
                        (hpd_rank(m.log_prob, m.log_prob_at_truth), -m.log_prob_at_truth, distance)
                    )
    finally:
        model.train(was_training)
    return _summaries(found, experiment.config.landmarks, names, levels)


def _faces(experiment: LandmarkExperiment, split: str) -> Dataset:
    if split != "valid":
        return experiment.source_images(split)
    config = experiment.config
    train = experiment.source_images("train")
    n = len(train)  # type: ignore[arg-type]
    valid = train_valid_indices(n, config.valid_fraction, config.seed)[1]
    if not valid:
        raise ValueError("this experiment holds no faces out for validation (valid_fraction=0)")
    return Subset(train, valid)


def _summaries(
    found: dict[tuple[str | None, str], list[tuple[float, float, float]]],
    landmarks: Sequence[str],
    names: Sequence[str],
    levels: Sequence[float],
) -> list[Calibration]:
    out = []
    for landmark in landmarks:
        for encoder in [None, *names]:
            rows = np.array(found[(encoder, landmark)])
            out.append(
                Calibration(
                    encoder=encoder,
                    landmark=landmark,
                    coverage=tuple(coverage(rows[:, 0], levels)),
                    nll=float(rows[:, 1].mean()),
                    median_distance=float(np.median(rows[:, 2])),
                    ranks=tuple(float(r) for r in rows[:, 0]),
                )
            )
    return out
