"""Invertible per-coordinate maps fitted on a training split: standardising and Gaussianising.

Mutual information does not change under an invertible map of x or of y, so an estimator
may be shown the data in whatever coordinates it models best. Two maps are offered:

- :class:`Standardizer`: ``(v - mean) / std`` per coordinate.
- :class:`Gaussianizer`: each coordinate through its empirical CDF, then the standard
  normal quantile function (a "copula" transform). Heavy tails, cubes and bounded
  supports all become roughly ``N(0, 1)`` marginals, which flows and critics fit easily.

Both are fitted on the training split only and then applied unchanged to every split, so
the estimate on held-out data is an estimate for one fixed invertible map of the data.
The Gaussianizer's map is piecewise linear and strictly increasing: between the distinct
training values it interpolates their normal scores (mid-ranks), and beyond the extremes
it continues with the slope of the outermost one percent of the data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MARGINAL_MAPS", "Gaussianizer", "Standardizer", "fit_marginal_map"]


class Standardizer:
    """``(v - mean) / std`` per coordinate, fitted on ``train: [N, D]``."""

    def __init__(self, train: Tensor) -> None:
        self.mean = train.mean(dim=0)
        self.std = train.std(dim=0).clamp_min(1e-12)

    def __call__(self, values: Tensor) -> Tensor:
        """``[M, D] -> [M, D]``."""
        return (values - self.mean) / self.std

    def log_abs_det(self) -> float:
        """``log |d map / d v|`` summed over coordinates (a constant for this map)."""
        return -float(self.std.log().sum())


class Gaussianizer:
    """Empirical CDF, then the normal quantile function, per coordinate of ``train: [N, D]``."""

    def __init__(self, train: Tensor) -> None:
        if train.ndim != 2 or train.shape[0] < 4:
            raise ValueError(
                f"Gaussianizer needs a [N >= 4, D] training set, got {tuple(train.shape)}"
            )
        data = train.double()
        n = data.shape[0]
        self.knots: list[Tensor] = []
        self.scores: list[Tensor] = []
        for column in data.T:
            values, counts = torch.unique(column, sorted=True, return_counts=True)
            if values.numel() < 2:
                raise ValueError(
                    "a coordinate takes a single value in the training split; it carries no "
                    "information, drop it before estimating"
                )
            mid_rank = torch.cumsum(counts, 0) - counts.double() / 2.0  # in (0, n)
            self.knots.append(values)
            self.scores.append(math.sqrt(2.0) * torch.erfinv(2.0 * mid_rank / n - 1.0))
        self.dtype = train.dtype

    def __call__(self, values: Tensor) -> Tensor:
        """``[M, D] -> [M, D]``, strictly increasing in each coordinate."""
        columns = [
            _interp(column.double().contiguous(), knots, scores)
            for column, knots, scores in zip(values.T, self.knots, self.scores, strict=True)
        ]
        return torch.stack(columns, dim=1).to(self.dtype)


def _interp(v: Tensor, knots: Tensor, scores: Tensor) -> Tensor:
    """Piecewise-linear ``knots -> scores``, extended linearly beyond both ends."""
    k = knots.numel()
    tail = max(1, k // 100)
    low_slope = (scores[tail] - scores[0]) / (knots[tail] - knots[0])
    high_slope = (scores[-1] - scores[-1 - tail]) / (knots[-1] - knots[-1 - tail])
    index = torch.searchsorted(knots, v).clamp(1, k - 1)
    left, right = knots[index - 1], knots[index]
    weight = (v - left) / (right - left)
    inside = scores[index - 1] + weight * (scores[index] - scores[index - 1])
    below = scores[0] + (v - knots[0]) * low_slope
    above = scores[-1] + (v - knots[-1]) * high_slope
    return torch.where(v < knots[0], below, torch.where(v > knots[-1], above, inside))


#: The per-coordinate maps :func:`mist_core.estimate_mi` can apply, by name.
MARGINAL_MAPS = {"standardize": Standardizer, "gaussianize": Gaussianizer}


def fit_marginal_map(name: str, train: Tensor) -> Standardizer | Gaussianizer:
    """Fit the map called ``name`` (see :data:`MARGINAL_MAPS`) on ``train: [N, D]``."""
    if name not in MARGINAL_MAPS:
        raise ValueError(f"unknown marginal map {name!r}; valid: {', '.join(MARGINAL_MAPS)}")
    return MARGINAL_MAPS[name](train)
