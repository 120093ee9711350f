r"""A lower bound on :math:`I(X;Y)` read from a fitted q(y|x): the contrastive (InfoNCE) bound
with :math:`\log q(y|x)` as its critic, on held-out samples.

For held-out pairs :math:`(x_i, y_i)` and a set :math:`S_i` of K held-out x's that holds
:math:`x_i` and K - 1 others drawn independently of it,

.. math::

    \ell_i = \log q(y_i|x_i) - \log \frac{1}{K} \sum_{k \in S_i} q(y_i|x_k),
    \qquad E[\ell_i] \le I(X;Y)

for any q(y|x) fitted on other samples (the InfoNCE bound holds for every critic; it is
never above log K). As K grows it tends to :math:`I - KL(p(y|x)\|q(y|x)) + KL(p(y)\|q_m(y))`
where :math:`q_m(y) = E_x[q(y|x)]`: the difference-of-entropies estimate with q(y) = q_m,
whose error is the part of q(y|x)'s error that its own marginal does not share. So where a
q(y|x) flow misses structure that no q(y) can make up for, the bound can sit above the DoE
estimate, and a lower bound above an estimate shows the estimate is too low:
:func:`mist_core.training.auto.auto_estimate` then reports the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mist_core._rng import seeded_permutation

__all__ = ["contrastive_terms"]

#: Rows of (y_i, x_k) pairs evaluated in one call of the density.
_PAIRS_PER_CALL = 1 << 16


def contrastive_terms(
    log_conditional: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    contrasts: int,
    seed: int,
) -> Tensor:
    r"""The bound's per-sample terms :math:`\ell_i` ``[n]`` on held-out ``x: [n, D_x]``,
    ``y: [n, D_y]``, whose mean is the bound (module docstring).

    ``log_conditional(x, y) -> [m]`` is log q(y|x) row by row, fitted without these samples.
    The samples are put in a seeded random cyclic order, and each one's set is its own x and
    the K - 1 = ``min(contrasts, n) - 1`` that follow it there: every sample has its own
    set (a set shared by all would move all their terms together, and their mean would
    vary more than their standard error says), and every x serves in K sets.
    Cost: n * K evaluations of q(y|x)."""
    n = len(x)
    k = min(contrasts, n)
    if k < 2:
        raise ValueError(f"the contrastive bound needs at least 2 samples, got {k}")
    order = seeded_permutation(n, seed)
    place = torch.empty(n, dtype=torch.long)
    place[order] = torch.arange(n)
    sets = order[(place[:, None] + torch.arange(k)) % n]  # [n, K]; column 0: the sample
    rows = max(1, _PAIRS_PER_CALL // k)
    pieces = []
    with torch.no_grad():
        for start in range(0, n, rows):
            index = sets[start : start + rows]
            m = len(index)
            scores = log_conditional(
                x[index.reshape(-1)], y[start : start + m].repeat_interleave(k, 0)
            )
            table = scores.double().view(m, k)  # log q(y_i | x_j) for j in sample i's set
            pieces.append(table[:, 0] - table.logsumexp(1) + math.log(k))
    return torch.cat(pieces)
