"""Where does the model think the nose is? Posterior maps over the pixels of one image.

For one image and one landmark, :func:`posterior_maps` evaluates the marginal q(landmark)
and every encoder's q(landmark | representation) at every pixel centre, and returns
:class:`PosteriorMap` records with the log-density grid, the highest-density (HPD) credible
thresholds, and the pointwise MI at the true landmark, ``log q(y|x) - log q(y)``.

Coordinates: ``x`` grows to the right and ``y`` downwards, in pixels of the original image;
pixel column ``j`` covers ``x`` in ``[j, j + 1)``, so the grid is evaluated at
``(j + 0.5, i + 0.5)`` and ``grid[i, j]`` lines up with ``image[:, i, j]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from mist_core.experiment import LandmarkExperiment

__all__ = [
    "PosteriorMap",
    "RegionMasses",
    "encode",
    "hpd_thresholds",
    "landmark_maps",
    "pixel_grid",
    "posterior_maps",
]


def pixel_grid(height: int, width: int) -> Tensor:
    """``[height, width, 2]`` pixel centres ``(x, y) = (j + 0.5, i + 0.5)``."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32) + 0.5,
        torch.arange(width, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1)


def hpd_thresholds(
    log_prob: np.ndarray, masses: Sequence[float] = (0.5, 0.9)
) -> dict[float, float]:
    """Log-density thresholds of the highest-density regions holding ``masses`` of the
    probability on the grid: the region ``log_prob >= t`` has (at least) that mass.

    The grid's probabilities are normalised to sum to one over the image (mass outside the
    image is ignored), one pixel being one unit of area.
    """
    if not masses:
        return {}
    flat = np.sort(log_prob.ravel())[::-1]
    probs = np.exp(flat - flat.max())
    cumulative = np.cumsum(probs) / probs.sum()
    out = {}
    for mass in masses:
        if not 0.0 < mass <= 1.0:
            raise ValueError(f"credible masses must lie in (0, 1], got {mass}")
        index = min(int(np.searchsorted(cumulative, mass)), len(flat) - 1)
        out[mass] = float(flat[index])
    return out


class RegionMasses(Protocol):
    """What draws a region at a nominal level: the HPD mass to draw for it (a
    :class:`mist_core.calibration.Recalibration`)."""

    def mass(self, level: float) -> float: ...


@dataclass(frozen=True)
class PosteriorMap:
    """One density over the pixels: ``log_prob[i, j]`` at pixel centre ``(j + .5, i + .5)``.

    ``encoder`` is ``None`` for the marginal q(landmark). ``pointwise_mi`` is
    ``log q(y*|x) - log q(y*)`` at the true position ``y*`` (nats; ``None`` for the marginal).
    ``mass_in_image`` is the probability that falls inside the image. ``levels`` maps each
    nominal level to its region's log-density threshold; ``drawn_masses`` maps it to the
    HPD mass drawn for it: the level itself, or a recalibrated mass (``recalibrated``).
    """

    landmark: str
    encoder: str | None
    log_prob: np.ndarray = field(repr=False)
    levels: Mapping[float, float]
    truth: tuple[float, float] | None
    log_prob_at_truth: float | None
    pointwise_mi: float | None
    mode: tuple[float, float]
    mass_in_image: float
    drawn_masses: Mapping[float, float] = field(default_factory=dict)
    recalibrated: bool = False

    def holds_truth(self, level: float) -> bool | None:
        """Whether the true position lies inside the region drawn for the nominal ``level``
        (``log q(y*) >= levels[level]``); ``None`` when the truth is not known.

        Raises:
            KeyError: ``level`` is not one of :attr:`levels`.
        """
        if level not in self.levels:
            raise KeyError(f"no region was drawn at level {level}; drawn: {sorted(self.levels)}")
        if self.log_prob_at_truth is None:
            return None
        return self.log_prob_at_truth >= self.levels[level]


@torch.no_grad()
def posterior_maps(
    experiment: LandmarkExperiment,
    image: Tensor,
    landmark: str,
    *,
    truth: Sequence[float] | Tensor | None = None,
    encoders: Sequence[str] | None = None,
    masses: Sequence[float] = (0.5, 0.9),
    recalibration: Mapping[str | None, RegionMasses] | None = None,
) -> list[PosteriorMap]:
    """The marginal and each encoder's posterior for ``landmark`` over ``image``.

    Args:
        experiment: a trained experiment (e.g. :func:`mist_core.checkpoints.load_experiment`)
            whose estimator is DoE (it holds the marginal q(landmark)).
        image: ``[3, H, W]`` in [0, 1]; the grid covers ``H x W`` pixels.
        landmark: one of the experiment's landmarks.
        truth: the true ``(x, y)`` when known, for the marker and the pointwise MI.
        encoders: a subset of the experiment's encoders (default: all).
        masses: the nominal levels of the regions to draw.
        recalibration: per density, the masses that draw those regions recalibrated
            (see :func:`landmark_maps`).

    Returns:
        The marginal's map (``encoder=None``) first, then one per encoder, each
        ``log_prob [H, W]``.

    Example (an untrained experiment: the maps are what its initial densities give):

    >>> import torch
    >>> from mist_core.experiment import LandmarkExperiment, preset
    >>> experiment = LandmarkExperiment(preset("demo-cpu", image_size=(32, 32),
    ...     encoders=("random_init",), landmarks=("nose",)))
    >>> maps = posterior_maps(experiment, torch.rand(3, 40, 32), "nose", truth=(16.0, 20.0))
    >>> [(m.encoder, m.log_prob.shape) for m in maps]
    [(None, (40, 32)), ('random_init', (40, 32))]
    >>> mi = maps[1].log_prob_at_truth - maps[0].log_prob_at_truth
    >>> abs(maps[1].pointwise_mi - mi) < 1e-9
    True
    """
    if landmark not in experiment.config.landmarks:
        raise ValueError(
            f"landmark {landmark!r} is not in this experiment: {experiment.config.landmarks}"
        )
    names = list(encoders) if encoders is not None else list(experiment.config.encoders)
    unknown = [n for n in names if n not in experiment.encoders]
    if unknown:
        raise ValueError(
            f"unknown encoder(s) {unknown}; this experiment has {list(experiment.encoders)}"
        )
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    model = experiment.model
    was_training = model.training
    model.eval()
    try:
        features = encode(experiment, image, names)
        height, width = image.shape[-2:]
        return landmark_maps(
            experiment, features, landmark, (height, width), truth, masses, recalibration
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def encode(
    experiment: LandmarkExperiment, image: Tensor, names: Sequence[str]
) -> dict[str, Tensor]:
    """``{encoder: [D]}``: the representation of one ``[3, H, W]`` image by each encoder in
    ``names`` (only those: the model's transform would run every encoder). The model should
    be in eval mode."""
    device = next(experiment.model.parameters()).device
    batch = image.unsqueeze(0).to(device)
    return {name: experiment.model.transforms[name](batch)[0] for name in names}


@torch.no_grad()
def landmark_maps(
    experiment: LandmarkExperiment,
    features: Mapping[str, Tensor],
    landmark: str,
    size: tuple[int, int],
    truth: Sequence[float] | Tensor | None = None,
    masses: Sequence[float] = (0.5, 0.9),
    recalibration: Mapping[str | None, RegionMasses] | None = None,
) -> list[PosteriorMap]:
    """:func:`posterior_maps` from representations already computed (:func:`encode`):
    the marginal's map, then one per encoder of ``features``, over a ``size = (H, W)`` grid.

    ``recalibration``: per density (encoder name, ``None`` for the marginal), what draws
    its regions at recalibrated masses (from ``mist_core.calibration.CalibrationReport.
    recalibrations(landmark)``); densities without one are drawn at the nominal masses."""
    fits = recalibration or {}
    device = next(experiment.model.parameters()).device
    grid = pixel_grid(*size).to(device)
    point = None if truth is None else torch.as_tensor(truth, dtype=torch.float32, device=device)
    estimators = experiment.pair_estimators.estimators
    # q(landmark) is shared by the encoders' estimators: any pair of the landmark has it
    q_landmark = estimators[f"{experiment.config.encoders[0]};{landmark}"].q_Y
    marginal_at_truth = None if point is None else float(q_landmark.log_prob(point))
    log_prob = q_landmark.log_prob(grid)
    maps = [_map(landmark, None, log_prob, None, point, marginal_at_truth, masses, fits.get(None))]
    for name, feature in features.items():
        conditional = estimators[f"{name};{landmark}"].q_Y_given_X.condition(feature)
        log_prob = conditional.log_prob(grid)
        fit = fits.get(name)
        maps.append(
            _map(landmark, name, log_prob, conditional, point, marginal_at_truth, masses, fit)
        )
    return maps


def _map(
    landmark: str,
    encoder: str | None,
    log_prob: Tensor,
    distribution: torch.distributions.Distribution | None,
    point: Tensor | None,
    marginal_at_truth: float | None,
    masses: Sequence[float],
    fit: RegionMasses | None,
) -> PosteriorMap:
    grid = log_prob.float().cpu().numpy()
    drawn = {level: level if fit is None else fit.mass(level) for level in masses}
    thresholds = hpd_thresholds(grid, list(dict.fromkeys(drawn.values())))
    i, j = np.unravel_index(int(np.argmax(grid)), grid.shape)
    at_truth = pointwise = None
    if point is not None and distribution is None:  # the marginal itself
        at_truth = marginal_at_truth
    elif point is not None and distribution is not None and marginal_at_truth is not None:
        at_truth = float(distribution.log_prob(point))
        pointwise = at_truth - marginal_at_truth
    return PosteriorMap(
        landmark=landmark,
        encoder=encoder,
        log_prob=grid,
        levels={level: thresholds[mass] for level, mass in drawn.items()},
        truth=None if point is None else (float(point[0]), float(point[1])),
        log_prob_at_truth=at_truth,
        pointwise_mi=pointwise,
        mode=(j + 0.5, i + 0.5),
        mass_in_image=float(np.exp(grid).sum()),
        drawn_masses=drawn,
        recalibrated=fit is not None,
    )
