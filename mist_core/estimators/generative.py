"""Generative estimators: MI from variational densities q(y | x) (and q(y)).

The densities are trained by maximum likelihood; the estimate is built from their
log-probabilities. All four estimators take ``x: [N, D_x]``, ``y: [N, D_y]``.

References:
    McAllester & Stratos, "Formal Limitations on the Measurement of MI", AISTATS 2020 (DoE).
    Barber & Agakov, "The IM Algorithm", NeurIPS 2003 (BA).
    Cheng et al., "CLUB: A Contrastive Log-ratio Upper Bound of MI", ICML 2020.
    Poole et al., "On Variational Bounds of Mutual Information", ICML 2019 (L1Out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mist_core._validation import strict_kwargs
from mist_core.distributions import (
    ConditionalTransformedNormal,
    TransformedNormal,
    conditional_transformed_normal,
    transformed_normal,
)
from mist_core.estimators.base import MIEstimator, Terms

__all__ = ["BA", "CLUB", "DoE", "L1Out", "ba", "club", "doe", "l1out"]


class _ConditionalEstimator(MIEstimator):
    """Shared parts of the estimators built on a conditional density q(y | x)."""

    def __init__(self, q_Y_given_X: ConditionalTransformedNormal) -> None:
        super().__init__()
        self.q_Y_given_X = q_Y_given_X
        # The log-likelihood of y is differentiable in x (an encoder upstream can learn from
        # it); in y it is not a meaningful objective (it would move the targets).
        self.infomax_gradient = {"x": True, "y": False}

    def _pairwise_log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``[N, N]`` with entry ``[a, b] = log q(y_b | x_a)``."""
        return self.q_Y_given_X.condition(x.unsqueeze(1)).log_prob(y.unsqueeze(0))


class DoE(MIEstimator):
    r"""Difference of entropies: :math:`\hat I = \mathbb{E}[\log q(y|x) - \log q(y)]`.

    Both densities are fit by maximum likelihood (loss: the two negative log-likelihoods).
    The estimate is neither a lower nor an upper bound, but it is consistent and not capped
    by the batch size.

    Args:
        q_Y_given_X: the conditional density, ``.condition(x).log_prob(y)``.
        q_Y: the marginal density, ``.log_prob(y)``; may be shared between estimators.

    Example: :math:`Y = X + \varepsilon/2` with standard normal :math:`X, \varepsilon`
    has :math:`I(X; Y) = \tfrac12 \log 5 \approx 0.80` nats. Built by :func:`doe`:

    >>> import torch
    >>> from mist_core.estimators import doe
    >>> _ = torch.manual_seed(0)
    >>> estimator = doe(x_dim=1, y_dim=1, hidden_dims=(16,))
    >>> x = torch.randn(256, 1)  # [N, D_x]
    >>> y = x + 0.5 * torch.randn(256, 1)  # [N, D_y]
    >>> opt = torch.optim.Adam(estimator.parameters(), lr=1e-2)
    >>> for _ in range(100):
    ...     terms = estimator.terms(x, y)
    ...     opt.zero_grad()
    ...     terms.loss.backward()
    ...     opt.step()
    >>> terms = estimator.eval().terms(x, y)
    >>> terms.log_ratio.shape  # log q(y | x) - log q(y) per sample
    torch.Size([256])
    >>> 0.6 < terms.log_ratio.mean().item() < 1.0
    True
    """

    def __init__(self, q_Y_given_X: ConditionalTransformedNormal, q_Y: TransformedNormal) -> None:
        super().__init__()
        self.q_Y_given_X = q_Y_given_X
        self.q_Y = q_Y
        self.infomax_gradient = {"x": True, "y": False}

    def terms(self, x: Tensor, y: Tensor) -> Terms:
        log_q_y_given_x = self.q_Y_given_X.condition(x).log_prob(y)
        log_q_y = self.q_Y.log_prob(y)
        return Terms(
            loss=-log_q_y_given_x.mean() - log_q_y.mean(),
            log_ratio=log_q_y_given_x - log_q_y,
        )


class BA(_ConditionalEstimator):
    r"""Barber-Agakov lower bound :math:`I \ge H(Y) + \mathbb{E}[\log q(y|x)]`.

    Needs the true entropy :math:`H(Y)` in nats (known for a simulated ``y``).
    """

    lower_bound = True

    def __init__(self, q_Y_given_X: ConditionalTransformedNormal, entropy_y: float) -> None:
        super().__init__(q_Y_given_X)
        if not math.isfinite(entropy_y):
            raise ValueError(f"entropy_y must be a finite number of nats, got {entropy_y!r}")
        self.entropy_y = float(entropy_y)

    def terms(self, x: Tensor, y: Tensor) -> Terms:
        log_q_y_given_x = self.q_Y_given_X.condition(x).log_prob(y)
        return Terms(loss=-log_q_y_given_x.mean(), log_ratio=log_q_y_given_x + self.entropy_y)


class CLUB(_ConditionalEstimator):
    r"""Contrastive log-ratio upper bound:
    :math:`\hat I_i = \log q(y_i|x_i) - \frac{1}{N-1}\sum_{j \ne i} \log q(y_j|x_i)`.

    An upper bound when q(y|x) is the true conditional. q is fit by maximum likelihood.
    The negatives leave out the positive pair, so the second term is an unbiased estimate
    of :math:`\mathbb{E}_{p(x)p(y)}[\log q(y|x)]`; Cheng et al. average over all ``N``,
    which pulls the estimate towards zero by a factor ``(N - 1) / N``.
    """

    upper_bound = True

    def terms(self, x: Tensor, y: Tensor) -> Terms:
        n = x.shape[0]
        if n < 2:
            raise ValueError("CLUB needs batches of at least 2 samples")
        log_q = self._pairwise_log_prob(x, y)  # [N (x), N (y)]
        positive = log_q.diagonal()
        negative = (log_q.sum(dim=1) - positive) / (n - 1)
        return Terms(loss=-positive.mean(), log_ratio=positive - negative)


class L1Out(_ConditionalEstimator):
    r"""Leave-one-out upper bound:
    :math:`\hat I_i = \log q(y_i|x_i) - \log \frac{1}{N-1}\sum_{j \ne i} q(y_i|x_j)`.

    For each ``y_i`` the mixture runs over the *other x's* (the first axis of
    ``log q[a, b] = log q(y_b | x_a)``). An upper bound when q(y|x) is the true conditional.
    """

    upper_bound = True

    def terms(self, x: Tensor, y: Tensor) -> Terms:
        n = x.shape[0]
        if n < 2:
            raise ValueError("L1Out needs batches of at least 2 samples")
        log_q = self._pairwise_log_prob(x, y)  # [N (x), N (y)]
        positive = log_q.diagonal()
        eye = torch.eye(n, dtype=torch.bool, device=log_q.device)
        others = log_q.masked_fill(eye, float("-inf"))
        log_mixture = torch.logsumexp(others, dim=0) - math.log(n - 1)  # over x, per y_i
        return Terms(loss=-positive.mean(), log_ratio=positive - log_mixture)


def _conditional(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int],
    transform_name: str,
    n_transforms: int,
    normalization: str | None,
) -> ConditionalTransformedNormal:
    return conditional_transformed_normal(
        input_dim=y_dim,
        context_dim=x_dim,
        hidden_dims=hidden_dims,
        transform_name=transform_name,
        n_transforms=n_transforms,
        normalization=normalization,
    )


@strict_kwargs
def doe(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (128, 64),
    transform_name: str = "conditional_affine_autoregressive",
    marginal_transform_name: str = "affine_autoregressive",
    marginal_hidden_dims: Sequence[int] | None = None,
    n_transforms: int = 1,
    normalization: str | None = "emanorm",
) -> DoE:
    """A :class:`DoE` with flow densities; ``marginal_hidden_dims`` defaults to ``hidden_dims``."""
    q_y = transformed_normal(
        input_dim=y_dim,
        hidden_dims=hidden_dims if marginal_hidden_dims is None else marginal_hidden_dims,
        transform_name=marginal_transform_name,
        n_transforms=n_transforms,
        normalization=normalization,
    )
    q_y_given_x = _conditional(
        x_dim, y_dim, hidden_dims, transform_name, n_transforms, normalization
    )
    return DoE(q_Y_given_X=q_y_given_x, q_Y=q_y)


@strict_kwargs
def ba(
    x_dim: int,
    y_dim: int,
    entropy_y: float,
    hidden_dims: Sequence[int] = (128, 64),
    transform_name: str = "conditional_affine_autoregressive",
    n_transforms: int = 1,
    normalization: str | None = "emanorm",
) -> BA:
    """A :class:`BA` lower bound; ``entropy_y`` is the true :math:`H(Y)` in nats."""
    q = _conditional(x_dim, y_dim, hidden_dims, transform_name, n_transforms, normalization)
    return BA(q_Y_given_X=q, entropy_y=entropy_y)


@strict_kwargs
def club(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (128, 64),
    transform_name: str = "conditional_affine_autoregressive",
    n_transforms: int = 1,
    normalization: str | None = "emanorm",
) -> CLUB:
    """A :class:`CLUB` upper bound with a flow q(y | x)."""
    q = _conditional(x_dim, y_dim, hidden_dims, transform_name, n_transforms, normalization)
    return CLUB(q_Y_given_X=q)


@strict_kwargs
def l1out(
    x_dim: int,
    y_dim: int,
    hidden_dims: Sequence[int] = (128, 64),
    transform_name: str = "conditional_affine_autoregressive",
    n_transforms: int = 1,
    normalization: str | None = "emanorm",
) -> L1Out:
    """An :class:`L1Out` upper bound with a flow q(y | x)."""
    q = _conditional(x_dim, y_dim, hidden_dims, transform_name, n_transforms, normalization)
    return L1Out(q_Y_given_X=q)
