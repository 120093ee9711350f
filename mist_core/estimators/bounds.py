"""Variational bounds on mutual information as pure functions of a critic's score matrix.

Every function takes ``scores: [N, N]`` with ``scores[i, j] = f(x_i, y_j)``: the diagonal
holds the N positive pairs drawn from :math:`p(x, y)`, the off-diagonal entries the
:math:`N(N-1)` negative pairs standing in for :math:`p(x)p(y)`. The positive pair is never
counted among the negatives (doing so caps NWJ, JS and SMILE near ``log N``); InfoNCE, whose
definition includes it, is the exception.

Each ``*_terms`` function returns per-sample terms ``[N]`` whose mean is the bound in nats.

References:
    Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
    Belghazi et al., "MINE: Mutual Information Neural Estimation", ICML 2018.
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
    Nowozin et al., "f-GAN", NeurIPS 2016 (the Jensen-Shannon objective).
    Song & Ermon, "Understanding the Limitations of Variational MI Estimators", ICLR 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dv_terms",
    "infonce_terms",
    "js_loss",
    "js_terms",
    "log_mean_exp_negatives",
    "nwj_terms",
    "smile_terms",
]


def _off_diagonal(scores: Tensor) -> Tensor:
    """The negatives ``[N, N - 1]``: row i holds f(x_i, y_j) for j != i."""
    n = scores.shape[0]
    if scores.shape != (n, n) or n < 2:
        raise ValueError(
            f"scores must be a square [N, N] matrix with N >= 2, got {tuple(scores.shape)}"
        )
    mask = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    return scores[mask].view(n, n - 1)


def log_mean_exp_negatives(scores: Tensor) -> Tensor:
    r""":math:`\log \frac{1}{N(N-1)} \sum_{i \ne j} e^{f(x_i, y_j)}` (a 0-d tensor)."""
    negatives = _off_diagonal(scores)
    return torch.logsumexp(negatives.flatten(), 0) - math.log(negatives.numel())


def infonce_terms(scores: Tensor) -> Tensor:
    r"""InfoNCE: :math:`f(x_i, y_i) - \log \frac{1}{N} \sum_j e^{f(x_i, y_j)}`.

    The bound never exceeds :math:`\log N`.
    """
    n = scores.shape[0]
    return scores.diagonal() - torch.logsumexp(scores, dim=1) + math.log(n)


def nwj_terms(scores: Tensor) -> Tensor:
    r"""NWJ: :math:`f(x_i, y_i) - \frac{1}{N-1}\sum_{j \ne i} e^{f(x_i, y_j) - 1}`.

    The optimal critic is :math:`1 + \log p(y|x)/p(y)`.
    """
    return scores.diagonal() - torch.exp(_off_diagonal(scores) - 1.0).mean(dim=1)


def dv_terms(scores: Tensor) -> Tensor:
    r"""Donsker-Varadhan: :math:`f(x_i, y_i) - \log \mathbb{E}_{p(x)p(y)}[e^f]`."""
    return scores.diagonal() - log_mean_exp_negatives(scores)


def js_terms(scores: Tensor) -> Tensor:
    r"""The MI estimate of a critic trained with the JS objective: NWJ at :math:`f + 1`.

    The optimal JS critic is :math:`\log p(y|x)/p(y)`, so shifting it by one gives the
    optimal NWJ critic (Poole et al., 2019, section 2.3).
    """
    return nwj_terms(scores + 1.0)


def js_loss(scores: Tensor) -> Tensor:
    r"""The negated Jensen-Shannon objective,
    :math:`\mathbb{E}_p[\mathrm{softplus}(-f)] + \mathbb{E}_{p(x)p(y)}[\mathrm{softplus}(f)]`."""
    return F.softplus(-scores.diagonal()).mean() + F.softplus(_off_diagonal(scores)).mean()


def smile_terms(scores: Tensor, tau: float | None = 5.0) -> Tensor:
    r"""SMILE: :math:`f(x_i, y_i) - \log \mathbb{E}_{p(x)p(y)}[\mathrm{clip}(e^f, e^{\pm\tau})]`.

    With ``tau=None`` this is the Donsker-Varadhan bound of a JS-trained critic.
    """
    negatives = _off_diagonal(scores)
    if tau is not None:
        negatives = negatives.clamp(-tau, tau)
    log_mean = torch.logsumexp(negatives.flatten(), 0) - math.log(negatives.numel())
    return scores.diagonal() - log_mean
