"""EMA standardiser: a flow layer that maps raw data to roughly zero mean and unit variance.

The statistics live in buffers (not parameters, so optimisers never touch them and
``state_dict`` round-trips them). They are set from the first batch observed in training
mode, then tracked with an exponential moving average under ``no_grad``; in eval mode they
are frozen. The map is affine, so its log-determinant is counted exactly in the density.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.distributions import Transform, constraints

from mist_core.distributions._zuko import LazyTransform

__all__ = ["EMANorm"]


def _mean_std(flat: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and biased std of ``flat`` over ``dim`` (``[N, D] -> [D]``) in two passes: exact
    for values far from zero, and much faster on CPU than ``Tensor.std(0)``, whose reduction
    across rows is slow there."""
    mean = flat.mean(dim, keepdim=True)
    return mean.squeeze(dim), (flat - mean).square_().mean(dim).sqrt_()


class EMANorm(LazyTransform):
    r"""Standardises :math:`y \mapsto (y - \mu) / s` with running statistics,
    :math:`s = \max(\sigma, r \bar\sigma) + \epsilon`.

    Args:
        features: size ``D`` of the last dimension of the data.
        momentum: weight of a new batch in the moving average (``0 < momentum <= 1``).
        eps: added to the standard deviation, in data units.
        min_scale_ratio: no dimension is divided by less than this fraction of the mean
            standard deviation. A (nearly) constant dimension, such as a dead ReLU unit of a
            random encoder, would otherwise blow tiny deviations up to huge values.

    ``EMANorm()(context)`` returns a :class:`torch.distributions.Transform` that reads the
    statistics when it is applied, so a batch observed just before evaluation is already
    used for it. Call :meth:`observe` with a batch ``[..., D]`` to update the statistics;
    it does nothing in eval mode, and nothing for the very tensor it observed last (a
    density shared by several estimators sees each batch once).
    """

    def __init__(
        self,
        features: int,
        momentum: float = 0.01,
        eps: float = 1e-6,
        min_scale_ratio: float = 1e-3,
    ) -> None:
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
        self.features = features
        self.momentum = momentum
        self.eps = eps
        self.min_scale_ratio = min_scale_ratio
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._last_observed: weakref.ref | None = None

    def extra_repr(self) -> str:
        return f"features={self.features}, momentum={self.momentum}"

    def __getstate__(self) -> dict:
        # pickling (torch.save of a whole model): the last observed batch is not state
        state = self.__dict__.copy()
        state["_last_observed"] = None
        return state

    @torch.no_grad()
    def observe(self, y: Tensor) -> None:
        """Update the running statistics from ``y`` of shape ``[..., D]`` (training mode only)."""
        if not self.training:
            return
        if y.shape[-1] != self.features:
            raise ValueError(
                f"EMANorm expects data with last dimension {self.features}, "
                f"got shape {tuple(y.shape)}"
            )
        if self._seen(y):
            return
        flat = y.detach().reshape(-1, self.features).to(self.mean.dtype)
        if flat.shape[0] < 2:
            return  # one sample says nothing about the spread
        self._update(*_mean_std(flat))

    def _seen(self, y: Tensor) -> bool:
        """One update per batch: heads sharing this density (a marginal shared by several
        DoE heads) each show it the same tensor, which must not move the average faster."""
        last = self._last_observed() if self._last_observed is not None else None
        if last is y:
            return True
        # a plain attribute: past nn.Module.__setattr__'s checks (~35 of these a step)
        self.__dict__["_last_observed"] = weakref.ref(y)
        return False

    def _update(self, mean: Tensor, std: Tensor) -> None:
        if not bool(self.initialized):
            self.mean.copy_(mean)
            self.std.copy_(std)
            self.initialized.fill_(True)
        else:
            self.mean.lerp_(mean, self.momentum)
            self.std.lerp_(std, self.momentum)

    def scale(self) -> Tensor:
        """The divisor ``[D]``: the running std, floored relative to its mean, plus ``eps``."""
        return self.std.clamp_min(self.min_scale_ratio * self.std.mean()) + self.eps

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / scale`` for ``x: [..., D]``."""
        return (x - self.mean) / self.scale()

    def forward(self, c: Tensor | None = None) -> Transform:
        return _Standardize(self)


def _unexpanded(t: Tensor) -> Tensor:
    """``t`` without the repeats of ``Tensor.expand``: size 1 along every dimension whose
    stride is 0 (``t`` is a broadcast of that view, which is what elementwise maps need)."""
    for dim in range(t.dim()):
        if t.stride(dim) == 0 and t.shape[dim] > 1:
            t = t.narrow(dim, 0, 1)
    return t


class _Standardize(Transform):
    """The affine map of an :class:`EMANorm`, reading its buffers at call time."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    sign = +1

    def __init__(self, norm: EMANorm) -> None:
        super().__init__()
        self.norm = norm

    def _call(self, y: Tensor) -> Tensor:
        # a grid broadcast against a batch of contexts is standardised once, not per context
        return self.norm.standardize(_unexpanded(y)).expand(y.shape)

    def _inverse(self, z: Tensor) -> Tensor:
        return z * self.norm.scale() + self.norm.mean

    def log_abs_det_jacobian(self, y: Tensor, z: Tensor) -> Tensor:
        ladj = -self.norm.scale().log().sum()
        return ladj.expand(torch.broadcast_shapes(y.shape, z.shape)[:-1])
