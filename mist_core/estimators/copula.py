r"""Elliptical copulas in closed form: the Gaussian and the Student-t copula of ``(x, y)``.

Both act on Gaussianised coordinates ``z`` (every coordinate of x and y mapped through its
empirical CDF and the normal quantile; see :mod:`mist_core.marginals`), where the marginals
are standard normal and all the dependence lives in the copula. MI does not change under
such maps, so the MI of the copula is the MI of the data.

- **Gaussian copula**: ``z ~ N(0, R)``. :math:`I = \tfrac12 [\log\det R_{xx} +
  \log\det R_{yy} - \log\det R]`.
- **Student-t copula** with ``dof`` degrees of freedom: ``t_j = F_dof^{-1}(Phi(z_j))`` is
  jointly Student-t with dispersion ``R`` (unit diagonal). :math:`I` = the Gaussian formula
  of ``R`` plus :math:`c(\nu, d_x, d_y) = h_\nu(d_x) + h_\nu(d_y) - h_\nu(d_x + d_y)`, with
  :math:`h_\nu(k)` the entropy of the standard k-variate t (tail dependence: X and Y share
  one random scale). As ``dof`` grows it becomes the Gaussian copula.

``R`` is fitted by maximum likelihood (for the t: the EM fixed point of the dispersion,
rescaled to unit diagonal after each step), ``dof`` by profile likelihood over a grid
refined by golden-section search in ``log dof``.

**Finite-sample bias.** The plug-in log-determinants are biased low. For Gaussian data
:math:`E[\log\det S] = \log\det\Sigma + \sum_{i=1}^{p} \psi(\tfrac{n-i}{2}) +
p\log\tfrac{2}{n-1}` for the sample covariance ``S`` of ``p`` coordinates from ``n``
samples; :func:`logdet_bias` is that sum, and :meth:`EllipticalCopula.mi` subtracts the
resulting bias of the MI, about :math:`d_x d_y / 2n` nats (0.125 nats for 50 x 50
coordinates from 10,000 samples). It is exact for the Gaussian copula with known
marginals, and used as the first-order correction for the t copula.

References:
    Ince et al., "A statistical framework for neuroimaging data analysis based on mutual
    information estimated via a Gaussian copula", Human Brain Mapping 2017.
    Demarta & McNeil, "The t copula and related copulas", Int. Stat. Review 2005.
    Arellano-Valle, Contreras-Reyes & Genton, "Shannon entropy and mutual information for
    multivariate skew-elliptical distributions", Scand. J. Stat. 2013.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DOF_GRID",
    "JITTER",
    "EllipticalCopula",
    "fit_gaussian_copula",
    "fit_student_copula",
    "logdet_bias",
    "student_mi_correction",
]

#: Degrees of freedom tried by :func:`fit_student_copula` before the golden-section refinement.
DOF_GRID = (0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0, 50.0, 200.0)

_LOG_2PI = math.log(2.0 * math.pi)


def _student_entropy(k: int, dof: float) -> float:
    """Entropy in nats of the standard ``k``-variate Student-t with ``dof`` degrees of freedom."""
    half, half_k = dof / 2.0, (dof + k) / 2.0
    return (
        math.lgamma(half)
        - math.lgamma(half_k)
        + 0.5 * k * math.log(dof * math.pi)
        + half_k * (_digamma(half_k) - _digamma(half))
    )


def student_mi_correction(dof: float, dim_x: int, dim_y: int) -> float:
    """:math:`c(\\nu, d_x, d_y)`: the MI of a Student-t beyond its dispersion's Gaussian MI."""
    if math.isinf(dof):
        return 0.0
    return (
        _student_entropy(dim_x, dof)
        + _student_entropy(dim_y, dof)
        - _student_entropy(dim_x + dim_y, dof)
    )


def logdet_bias(p: int, n: int) -> float:
    """:math:`E[\\log\\det S] - \\log\\det\\Sigma` for the sample covariance ``S`` (divided
    by ``n - 1``) of ``p`` Gaussian coordinates from ``n`` samples (negative)."""
    if p == 0:
        return 0.0
    dof = n - 1
    halves = (dof - torch.arange(p, dtype=torch.float64)) / 2.0
    return float((torch.special.digamma(halves) + math.log(2.0 / dof)).sum())


def _logdet(matrix: Tensor) -> float:
    return float(2.0 * torch.linalg.cholesky(matrix).diagonal().log().sum())


def _digamma(value: float) -> float:
    return float(torch.special.digamma(torch.tensor(value, dtype=torch.float64)))


def _to_t(z: Tensor, dof: float) -> Tensor:
    """Gaussianised ``z: [n, d]`` to Student-t scores ``F_dof^{-1}(Phi(z))`` (float64)."""
    if math.isinf(dof):
        return z.double()
    # imported here, not with mist_core: SciPy's BLAS starts a thread at import, and the
    # face-drawing workers are forked from processes that import mist_core
    from scipy import special

    values = z.double().cpu().numpy()
    # by symmetry, work in the lower tail where Phi(z) keeps its precision
    lower = special.ndtr(-np.abs(values))
    t = -special.stdtrit(dof, lower) * np.sign(values)
    return torch.from_numpy(np.ascontiguousarray(t))


def _t_log_density_1d(t: Tensor, dof: float) -> Tensor:
    """``log f_dof(t)`` per coordinate of ``t: [n, d]`` -> ``[n, d]``."""
    return (
        math.lgamma((dof + 1) / 2)
        - math.lgamma(dof / 2)
        - 0.5 * math.log(dof * math.pi)
        - (dof + 1) / 2 * torch.log1p(t * t / dof)
    )


def _mahalanobis(t: Tensor, corr: Tensor) -> tuple[Tensor, float]:
    """Squared norms ``t_i^T corr^{-1} t_i`` ``[n]`` and ``log det corr``."""
    chol = torch.linalg.cholesky(corr)
    w = torch.linalg.solve_triangular(chol, t.T, upper=False)  # [d, n]
    return (w * w).sum(0), float(2.0 * chol.diagonal().log().sum())


@dataclass(frozen=True)
class EllipticalCopula:
    """A fitted Gaussian (``dof = inf``) or Student-t copula of ``[x, y]`` (``dim_x`` first).

    Every density is over Gaussianised coordinates ``z_x: [n, dim_x]``, ``z_y: [n, dim_y]``
    (standard normal marginals); ``n_fit`` is the number of samples it was fitted on.
    """

    corr: Tensor  # [d, d] float64, unit diagonal
    dof: float
    dim_x: int
    n_fit: int

    @property
    def name(self) -> str:
        return "gaussian-copula" if math.isinf(self.dof) else "student-copula"

    def _log_density(self, z: Tensor, index: slice) -> Tensor:
        """``log q(z[:, index])`` of the copula's sub-vector ``index`` (with its N(0,1)
        marginals), ``z: [n, k] -> [n]``."""
        corr = self.corr[index, index]
        z = z.double()
        k = z.shape[1]
        log_normal = -0.5 * (z * z).sum(1) - 0.5 * k * _LOG_2PI
        if math.isinf(self.dof):
            m, logdet = _mahalanobis(z, corr)
            return -0.5 * m - 0.5 * logdet - 0.5 * k * _LOG_2PI
        t = _to_t(z, self.dof).to(z.device)
        m, logdet = _mahalanobis(t, corr)
        nu = self.dof
        joint = (
            math.lgamma((nu + k) / 2)
            - math.lgamma(nu / 2)
            - 0.5 * k * math.log(nu * math.pi)
            - 0.5 * logdet
            - (nu + k) / 2 * torch.log1p(m / nu)
        )
        return joint - _t_log_density_1d(t, nu).sum(1) + log_normal

    def log_joint(self, z_x: Tensor, z_y: Tensor) -> Tensor:
        """``log q(z_x, z_y)``: ``[n, dim_x]``, ``[n, dim_y]`` -> ``[n]``."""
        return self._log_density(torch.cat([z_x, z_y], dim=1), slice(None))

    def log_marginal_x(self, z_x: Tensor) -> Tensor:
        return self._log_density(z_x, slice(0, self.dim_x))

    def log_marginal_y(self, z_y: Tensor) -> Tensor:
        """``log q(z_y)`` ``[n, dim_y] -> [n]``."""
        return self._log_density(z_y, slice(self.dim_x, None))

    def log_conditional(self, z_x: Tensor, z_y: Tensor) -> Tensor:
        """``log q(z_y | z_x) = log q(z_x, z_y) - log q(z_x)``, ``[n]``."""
        return self.log_joint(z_x, z_y) - self.log_marginal_x(z_x)

    def plug_in_mi(self) -> float:
        """The MI of the fitted copula in nats, before the finite-sample correction."""
        dx = self.dim_x
        gaussian = 0.5 * (
            _logdet(self.corr[:dx, :dx]) + _logdet(self.corr[dx:, dx:]) - _logdet(self.corr)
        )
        dy = self.corr.shape[0] - dx
        return gaussian + student_mi_correction(self.dof, dx, dy)

    def bias(self) -> float:
        """The expected excess of :meth:`plug_in_mi` over the truth from fitting ``R`` on
        ``n_fit`` samples (positive): see the module docstring."""
        dx, d = self.dim_x, self.corr.shape[0]
        n = self.n_fit
        return 0.5 * (logdet_bias(dx, n) + logdet_bias(d - dx, n) - logdet_bias(d, n))

    def mi(self) -> float:
        """The MI of the fitted copula less its finite-sample bias, in nats."""
        return self.plug_in_mi() - self.bias()


def _as_pair(z_x: Tensor, z_y: Tensor) -> Tensor:
    if z_x.ndim != 2 or z_y.ndim != 2 or len(z_x) != len(z_y):
        raise ValueError(
            f"need paired [n, d] samples, got {tuple(z_x.shape)} and {tuple(z_y.shape)}"
        )
    if len(z_x) < z_x.shape[1] + z_y.shape[1] + 2:
        raise ValueError(
            f"{len(z_x)} samples are too few to fit a copula of {z_x.shape[1] + z_y.shape[1]} "
            "coordinates: need more samples than coordinates"
        )
    return torch.cat([z_x, z_y], dim=1).double()


#: Weight of the identity mixed into every fitted correlation matrix, so that duplicated or
#: deterministic coordinates give a finite (very large) MI instead of a singular matrix.
JITTER = 1e-9


def _unit_diagonal(cov: Tensor) -> Tensor:
    scale = cov.diagonal().clamp_min(1e-300).rsqrt()
    corr = cov * scale[:, None] * scale[None, :]
    corr = (1.0 - JITTER) * 0.5 * (corr + corr.T)
    return corr + JITTER * torch.eye(len(corr), dtype=corr.dtype)


def fit_gaussian_copula(z_x: Tensor, z_y: Tensor) -> EllipticalCopula:
    """The Gaussian copula of Gaussianised ``z_x: [n, dim_x]``, ``z_y: [n, dim_y]``."""
    z = _as_pair(z_x, z_y)
    centred = z - z.mean(0)
    cov = centred.T @ centred / (len(z) - 1)
    return EllipticalCopula(_unit_diagonal(cov), math.inf, z_x.shape[1], len(z))


def _fit_dispersion(t: Tensor, dof: float, steps: int = 50, tol: float = 1e-7) -> Tensor:
    """EM fixed point of the t dispersion at zero location, kept at unit diagonal."""
    d = t.shape[1]
    corr = _unit_diagonal(t.T @ t / len(t))
    for _ in range(steps):
        m, _ = _mahalanobis(t, corr)
        weight = (dof + d) / (dof + m)
        new = _unit_diagonal((t * weight[:, None]).T @ t / len(t))
        if float((new - corr).abs().max()) < tol:
            return new
        corr = new
    return corr


def _student_fit(z: Tensor, dof: float, dim_x: int) -> tuple[EllipticalCopula, float]:
    """The t copula at ``dof`` fitted on ``z: [n, d]``, and its mean log-likelihood."""
    t = _to_t(z, dof)
    copula = EllipticalCopula(_fit_dispersion(t, dof), dof, dim_x, len(z))
    loglik = float(copula._log_density(z, slice(None)).mean())
    return copula, loglik


def fit_student_copula(
    z_x: Tensor, z_y: Tensor, dofs: tuple[float, ...] = DOF_GRID, refine_steps: int = 8
) -> EllipticalCopula:
    """The Student-t copula of Gaussianised ``z_x: [n, dim_x]``, ``z_y: [n, dim_y]``, its
    ``dof`` chosen by profile likelihood: the best of ``dofs``, then ``refine_steps`` of
    golden-section search in ``log dof`` between that point's neighbours."""
    z = _as_pair(z_x, z_y)
    dim_x = z_x.shape[1]
    grid = sorted(dofs)
    fits = [_student_fit(z, dof, dim_x) for dof in grid]
    best = max(range(len(grid)), key=lambda i: fits[i][1])
    if refine_steps <= 0 or len(grid) < 3:
        return fits[best][0]
    low = math.log(grid[max(best - 1, 0)])
    high = math.log(grid[min(best + 1, len(grid) - 1)])
    found = {grid[i]: fits[i] for i in range(len(grid))}
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def score(log_dof: float) -> float:
        dof = math.exp(log_dof)
        if dof not in found:
            found[dof] = _student_fit(z, dof, dim_x)
        return found[dof][1]

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(refine_steps):
        if score(a) > score(b):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    return max(found.values(), key=lambda fit: fit[1])[0]
