"""Samplers of paired data whose true mutual information is known in closed form.

Every sampler carries its own answer: ``sampler.mutual_information()`` in nats, so a check
reads "estimate within tolerance of ``sampler.mutual_information()``".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CorrelatedGaussian", "Transformed", "asinh3", "cube", "identity"]


@dataclass(frozen=True)
class CorrelatedGaussian:
    r"""``x ~ N(0, I_d)``, ``y = \rho x + \sqrt{1 - \rho^2} \epsilon``: each coordinate pair has
    correlation :math:`\rho`, and :math:`I(X; Y) = -\frac{d}{2} \log(1 - \rho^2)`.

    Build it from the MI you want with :meth:`with_mi`.
    """

    dim: int
    rho: float

    @classmethod
    def with_mi(cls, dim: int, mi: float) -> CorrelatedGaussian:
        return cls(dim, math.sqrt(1.0 - math.exp(-2.0 * mi / dim)))

    def mutual_information(self) -> float:
        return -0.5 * self.dim * math.log(1.0 - self.rho**2)

    def entropy_y(self) -> float:
        """:math:`H(Y)` of the standard normal ``y``, in nats."""
        return 0.5 * self.dim * math.log(2 * math.pi * math.e)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``x: [n, d]``, ``y: [n, d]``."""
        x = torch.randn(n, self.dim, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator)
        return x, self.rho * x + math.sqrt(1.0 - self.rho**2) * noise


#: E[log |Z|] for Z ~ N(0, 1): -(gamma + log 2) / 2.
_E_LOG_ABS_NORMAL = -(0.5772156649015329 + math.log(2.0)) / 2.0


def cube(t: Tensor) -> Tensor:
    return t**3


def asinh3(t: Tensor) -> Tensor:
    return torch.asinh(3.0 * t)


def identity(t: Tensor) -> Tensor:
    return t


#: Expected log-Jacobian E[log |f'(Z)|] per coordinate of the maps above, Z ~ N(0, 1),
#: so that H(f(Y)) = H(Y) + d * shift is known for BA.
LOG_JACOBIAN_SHIFT = {cube: math.log(3.0) + 2.0 * _E_LOG_ABS_NORMAL, identity: 0.0}


@dataclass(frozen=True)
class Transformed:
    """A sampler with invertible maps applied to x and y: the MI does not change."""

    base: CorrelatedGaussian
    fx: Callable[[Tensor], Tensor] = identity
    fy: Callable[[Tensor], Tensor] = identity

    def mutual_information(self) -> float:
        return self.base.mutual_information()

    def entropy_y(self) -> float:
        """:math:`H(f_y(Y))` in nats (known for the maps in ``LOG_JACOBIAN_SHIFT``)."""
        if self.fy not in LOG_JACOBIAN_SHIFT:
            raise ValueError(f"H(Y) is not known for the map {self.fy.__name__}")
        return self.base.entropy_y() + self.base.dim * LOG_JACOBIAN_SHIFT[self.fy]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x, y = self.base.sample(n, generator)
        return self.fx(x), self.fy(y)
