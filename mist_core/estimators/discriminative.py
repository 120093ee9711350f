"""Discriminative estimators: MI from a critic f(x, y) scored on every pair of a batch.

Each estimator wires a critic (:mod:`mist_core.estimators.critics`) to one bound of
:mod:`mist_core.estimators.bounds`. All in-batch pairs ``(x_i, y_j), j != i`` serve as
negatives. Inputs: ``x: [N, D_x]``, ``y: [N, D_y]``, with ``N >= 2``. The critics see the
data as given: standardise raw units first (:func:`mist_core.estimate_mi` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mist_core._validation import strict_kwargs
from mist_core.estimators import bounds
from mist_core.estimators.base import MIEstimator, Terms
from mist_core.estimators.critics import CRITICS

__all__ = [
    "JS",
    "MINE",
    "NWJ",
    "SMILE",
    "DiscriminativeEstimator",
    "InfoNCE",
    "infonce",
    "js",
    "mine",
    "nwj",
    "smile",
]


class DiscriminativeEstimator(MIEstimator):
    """Base of the critic-based estimators; ``critic(x, y)`` returns scores ``[N, N]``."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic
        self.infomax_gradient = {"x": True, "y": True}

    def terms(self, x: Tensor, y: Tensor) -> Terms:
        if x.shape[0] < 2:
            raise ValueError(f"{type(self).__name__} needs batches of at least 2 samples")
        scores = self.critic(x, y)
        log_ratio = self._bound(scores)
        return Terms(loss=self._loss(scores, log_ratio), log_ratio=log_ratio)

    def _bound(self, scores: Tensor) -> Tensor:
        raise NotImplementedError

    def _loss(self, scores: Tensor, log_ratio: Tensor) -> Tensor:
        return -log_ratio.mean()


class NWJ(DiscriminativeEstimator):
    """Nguyen-Wainwright-Jordan lower bound (:func:`~mist_core.estimators.bounds.nwj_terms`)."""

    lower_bound = True

    def _bound(self, scores: Tensor) -> Tensor:
        return bounds.nwj_terms(scores)


class InfoNCE(DiscriminativeEstimator):
    """InfoNCE lower bound, at most ``log N`` (see :func:`.bounds.infonce_terms`)."""

    lower_bound = True

    def _bound(self, scores: Tensor) -> Tensor:
        return bounds.infonce_terms(scores)


class MINE(DiscriminativeEstimator):
    r"""MINE: the Donsker-Varadhan bound, trained with a moving-average corrected gradient.

    The gradient of :math:`\log \mathbb{E}[e^f]` is biased on a mini-batch; MINE divides by
    an exponential moving average of :math:`\mathbb{E}[e^f]` instead (``gamma`` is the EMA's
    decay). The reported estimate is the plain DV bound on the batch.
    """

    lower_bound = True

    def __init__(self, critic: nn.Module, gamma: float = 0.9) -> None:
        super().__init__(critic)
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {gamma}")
        self.gamma = gamma
        self.register_buffer("log_ema", torch.tensor(float("nan")))

    def _bound(self, scores: Tensor) -> Tensor:
        return bounds.dv_terms(scores)

    def _loss(self, scores: Tensor, log_ratio: Tensor) -> Tensor:
        log_mean = bounds.log_mean_exp_negatives(scores)
        if self.training:
            with torch.no_grad():
                if torch.isnan(self.log_ema):
                    self.log_ema.copy_(log_mean)
                else:
                    self.log_ema.copy_(
                        torch.logaddexp(
                            self.log_ema + math.log(self.gamma),
                            log_mean + math.log(1.0 - self.gamma),
                        )
                    )
        log_ema = self.log_ema if not torch.isnan(self.log_ema) else log_mean.detach()
        # d/df of exp(log_mean - log_ema) = E[e^f grad f] / EMA: the corrected gradient.
        surrogate = torch.exp(log_mean - log_ema)
        return -(scores.diagonal().mean() - surrogate)


class JS(DiscriminativeEstimator):
    """Critic trained with the Jensen-Shannon objective; MI read off with NWJ at ``f + 1``."""

    lower_bound = True

    def _bound(self, scores: Tensor) -> Tensor:
        return bounds.js_terms(scores)

    def _loss(self, scores: Tensor, log_ratio: Tensor) -> Tensor:
        return bounds.js_loss(scores)


class SMILE(DiscriminativeEstimator):
    """SMILE: a JS-trained critic read off with a clipped DV bound (``tau``; None: no clip)."""

    def __init__(self, critic: nn.Module, tau: float | None = 5.0) -> None:
        super().__init__(critic)
        if tau is not None and tau <= 0:
            raise ValueError(f"tau must be positive or None, got {tau}")
        self.tau = tau

    def _bound(self, scores: Tensor) -> Tensor:
        return bounds.smile_terms(scores, self.tau)

    def _loss(self, scores: Tensor, log_ratio: Tensor) -> Tensor:
        return bounds.js_loss(scores)


def _critic(
    x_dim: int, y_dim: int, critic: str, hidden_dims: Sequence[int], embedding_dim: int
) -> nn.Module:
    if critic == "joint":
        return CRITICS["joint"](x_dim, y_dim, hidden_dims)
    if critic == "separable":
        return CRITICS["separable"](x_dim, y_dim, hidden_dims, embedding_dim)
    raise ValueError(f"unknown critic {critic!r}; valid critics: {', '.join(CRITICS)}")


@strict_kwargs
def nwj(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    critic: str = "joint",
    embedding_dim: int = 128,
) -> NWJ:
    """An :class:`NWJ` estimator with a ``"joint"`` or ``"separable"`` critic."""
    return NWJ(_critic(x_dim, y_dim, critic, hidden_dims, embedding_dim))


@strict_kwargs
def mine(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    critic: str = "joint",
    embedding_dim: int = 128,
    gamma: float = 0.9,
) -> MINE:
    """A :class:`MINE` estimator (``gamma``: decay of the denominator's moving average)."""
    return MINE(_critic(x_dim, y_dim, critic, hidden_dims, embedding_dim), gamma=gamma)


@strict_kwargs
def infonce(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    critic: str = "joint",
    embedding_dim: int = 128,
) -> InfoNCE:
    """An :class:`InfoNCE` estimator."""
    return InfoNCE(_critic(x_dim, y_dim, critic, hidden_dims, embedding_dim))


@strict_kwargs
def js(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    critic: str = "joint",
    embedding_dim: int = 128,
) -> JS:
    """A :class:`JS` estimator."""
    return JS(_critic(x_dim, y_dim, critic, hidden_dims, embedding_dim))


@strict_kwargs
def smile(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (256, 256),
    critic: str = "joint",
    embedding_dim: int = 128,
    tau: float | None = 5.0,
) -> SMILE:
    """A :class:`SMILE` estimator with clipping threshold ``tau``."""
    return SMILE(_critic(x_dim, y_dim, critic, hidden_dims, embedding_dim), tau=tau)
