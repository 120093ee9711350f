r"""Samplers of paired data whose true mutual information is known in closed form.

Every sampler carries its own answer: ``sampler.mutual_information()`` in nats, so a check
reads "estimate within tolerance of ``sampler.mutual_information()``".

Base samplers (each with ``dim_x``, ``dim_y``, ``mutual_information()``, ``entropy_y()``,
``sample(n, generator)`` and the true log-densities ``log_density(x, y)``,
``log_density_x(x)``, ``log_density_y(y)``, so the answer can be checked by Monte Carlo):

- :class:`CorrelatedGaussian`: ``d`` independent pairs with correlation :math:`\rho`.
- :class:`GeneralGaussian`: any joint covariance, :math:`I = \frac12 [\log\det\Sigma_{XX} +
  \log\det\Sigma_{YY} - \log\det\Sigma]`; built for the "Beyond Normal" multinormal tasks by
  :func:`multinormal_dense`, :func:`multinormal_sparse` and :func:`one_v_one_normal`.
- :class:`StudentT`: multivariate Student-t, :math:`I` = the Gaussian MI of the dispersion
  plus a correction that depends only on the degrees of freedom and the dimensions.
- :class:`AdditiveUniform`: ``X ~ U(0, 1)``, ``Y = X + U(-eps, eps)``, any ``eps > 0``.

MI-preserving maps (:class:`Bijection`, coordinate-wise, each with ``inverse``): :data:`cube`,
:data:`half_cube`, :data:`asinh`, :data:`asinh3`, :data:`normal_cdf`, :data:`identity`; and
:class:`Spiral`, a norm-dependent rotation of the whole vector. :class:`Transformed` applies
maps to x and y of any sampler and keeps its MI.

:data:`BMI_TASKS` rebuilds eight tasks of the "Beyond Normal" benchmark (Czyż et al.,
NeurIPS 2023; reference implementation github.com/cbg-ethz/bmi) from their published
definitions. Their true MI, as computed here (nats)::

    1v1-normal-0.75               0.4133   -1/2 log(1 - 0.75^2)
    1v1-additive-0.1              1.7094   0.1 - log 0.2
    multinormal-dense-5-5         0.5928   equicorrelation 0.5 over all 10 coordinates
    multinormal-sparse-5-5        1.0217   2 pairs of correlation 0.8: -log(1 - 0.8^2)
    half_cube-sparse-5-5          1.0217   (the task above, half-cube on x and on y)
    multinormal-dense-25-25       1.2922
    multinormal-sparse-25-25      1.0217
    asinh-student-identity-5-5-2  0.4482   Student-t correction only (identity dispersion)

(The BMI repository computes these with the same closed forms; no separate table of
published numbers was available to compare against, so the tests check the closed forms
against independent formulas and Monte Carlo with the true densities.)

All samples are ``torch.float32`` by default (``dtype=torch.float64`` on request); densities
are returned as ``torch.float64``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BMI_TASKS",
    "LOG_JACOBIAN_SHIFT",
    "AdditiveUniform",
    "Bijection",
    "CorrelatedGaussian",
    "GeneralGaussian",
    "Sampler",
    "Spiral",
    "StudentT",
    "Transformed",
    "asinh",
    "asinh3",
    "cube",
    "half_cube",
    "identity",
    "multinormal_dense",
    "multinormal_sparse",
    "normal_cdf",
    "one_v_one_normal",
]

_LOG_2PI = math.log(2.0 * math.pi)
Matrix = tuple[tuple[float, ...], ...]


class Sampler(Protocol):
    """What :class:`Transformed` and the benchmark need from a sampler."""

    @property
    def dim_x(self) -> int: ...

    @property
    def dim_y(self) -> int: ...

    def mutual_information(self) -> float: ...

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = ...
    ) -> tuple[Tensor, Tensor]: ...


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _f64(t: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def _rows(t: Tensor | np.ndarray, dim: int, name: str) -> Tensor:
    """``t`` as a float64 ``[n, dim]`` tensor (a vector is read as ``[n, 1]`` when dim is 1)."""
    t = _f64(t)
    if t.ndim == 1 and dim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[1] != dim:
        raise ValueError(f"{name} must have shape [n, {dim}], got {tuple(t.shape)}")
    return t


def _as_matrix(m: Matrix | np.ndarray | Tensor, name: str) -> np.ndarray:
    """Validate a symmetric positive-definite matrix; returns it as float64 ``[k, k]``."""
    a = np.array(m, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"{name} must be a square matrix of size >= 2, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    if not np.allclose(a, a.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name} is not symmetric")
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name} is not positive definite") from None
    return a


def _to_tuple(a: np.ndarray) -> Matrix:
    return tuple(tuple(float(v) for v in row) for row in a)


def _logdet(a: np.ndarray) -> float:
    sign, value = np.linalg.slogdet(a)
    assert sign > 0, "validated positive-definite matrices only"
    return float(value)


def _gaussian_mi(cov: np.ndarray, dim_x: int) -> float:
    r""":math:`\frac12 [\log\det\Sigma_{XX} + \log\det\Sigma_{YY} - \log\det\Sigma]`."""
    return 0.5 * (_logdet(cov[:dim_x, :dim_x]) + _logdet(cov[dim_x:, dim_x:]) - _logdet(cov))


def _mahalanobis(v: Tensor, cov: np.ndarray) -> tuple[Tensor, float]:
    """Squared Mahalanobis norms ``[n]`` of the rows of ``v: [n, k]``, and log det ``cov``."""
    chol = torch.linalg.cholesky(_f64(cov))
    z = torch.linalg.solve_triangular(chol, v.T, upper=False)  # [k, n]
    return (z**2).sum(0), 2.0 * float(torch.log(torch.diagonal(chol)).sum())


def _gaussian_logpdf(v: Tensor, cov: np.ndarray) -> Tensor:
    """``log N(v; 0, cov)`` for the rows of ``v: [n, k]``; returns ``[n]`` float64."""
    maha, logdet = _mahalanobis(v, cov)
    return -0.5 * (maha + logdet + cov.shape[0] * _LOG_2PI)


def _digamma(v: float) -> float:
    return float(torch.special.digamma(torch.tensor(v, dtype=torch.float64)))


def _student_entropy(k: int, dof: float) -> float:
    r"""Differential entropy of the standard ``k``-variate Student-t (identity dispersion):

    :math:`\log\Gamma(\nu/2) - \log\Gamma((\nu+k)/2) + \frac{k}{2}\log(\nu\pi)
    + \frac{\nu+k}{2}[\psi(\frac{\nu+k}{2}) - \psi(\frac{\nu}{2})]`
    (Arellano-Valle, Contreras-Reyes and Genton 2013, Eq. 7).
    """
    half = 0.5 * (dof + k)
    return (
        math.lgamma(0.5 * dof)
        - math.lgamma(half)
        + 0.5 * k * math.log(dof * math.pi)
        + half * (_digamma(half) - _digamma(0.5 * dof))
    )


def _student_logpdf(v: Tensor, dispersion: np.ndarray, dof: float) -> Tensor:
    """``log t_dof(v; 0, dispersion)`` for the rows of ``v: [n, k]``; returns ``[n]``."""
    k = dispersion.shape[0]
    maha, logdet = _mahalanobis(v, dispersion)
    const = (
        math.lgamma(0.5 * (dof + k))
        - math.lgamma(0.5 * dof)
        - 0.5 * k * math.log(dof * math.pi)
        - 0.5 * logdet
    )
    return const - 0.5 * (dof + k) * torch.log1p(maha / dof)


def _sub(a: np.ndarray, idx: slice) -> np.ndarray:
    return a[idx, idx]


def _gaussian_1d_logpdf(v: Tensor, k: int) -> Tensor:
    """log density of ``k`` independent standard normals, rows of ``v: [n, k]``."""
    return -0.5 * ((v**2).sum(1) + k * _LOG_2PI)


# --------------------------------------------------------------------------------------------
# Gaussian samplers
# --------------------------------------------------------------------------------------------


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

    @property
    def dim_x(self) -> int:
        return self.dim

    @property
    def dim_y(self) -> int:
        return self.dim

    def mutual_information(self) -> float:
        return -0.5 * self.dim * math.log(1.0 - self.rho**2)

    def entropy_y(self) -> float:
        """:math:`H(Y)` of the standard normal ``y``, in nats."""
        return 0.5 * self.dim * math.log(2 * math.pi * math.e)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``x: [n, d]``, ``y: [n, d]``."""
        x = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        noise = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        return x, self.rho * x + math.sqrt(1.0 - self.rho**2) * noise

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)``, ``x: [n, d]``, ``y: [n, d]`` -> ``[n]`` float64."""
        x, y = _rows(x, self.dim, "x"), _rows(y, self.dim, "y")
        var = 1.0 - self.rho**2
        resid = y - self.rho * x
        cond = -0.5 * ((resid**2).sum(1) / var + self.dim * (_LOG_2PI + math.log(var)))
        return _gaussian_1d_logpdf(x, self.dim) + cond

    def log_density_x(self, x: Tensor) -> Tensor:
        """``log p(x)``, ``x: [n, d]`` -> ``[n]`` float64."""
        return _gaussian_1d_logpdf(_rows(x, self.dim, "x"), self.dim)

    def log_density_y(self, y: Tensor) -> Tensor:
        """``log p(y)``, ``y: [n, d]`` -> ``[n]`` float64."""
        return _gaussian_1d_logpdf(_rows(y, self.dim, "y"), self.dim)


@dataclass(frozen=True)
class GeneralGaussian:
    r"""``(x, y) ~ N(0, cov)`` with ``x`` the first ``dim_x`` coordinates of the joint vector.

    ``cov``: joint covariance ``[dim_x + dim_y, dim_x + dim_y]`` (nested tuples or an array;
    stored as nested tuples so the sampler stays hashable). Symmetric positive-definite.

    :math:`I(X; Y) = \frac12 [\log\det\Sigma_{XX} + \log\det\Sigma_{YY} - \log\det\Sigma]`.
    """

    cov: Matrix = field(repr=False)
    dim_x: int

    def __post_init__(self) -> None:
        a = _as_matrix(self.cov, "cov")
        if not 1 <= self.dim_x < a.shape[0]:
            raise ValueError(f"dim_x must be in [1, {a.shape[0] - 1}], got {self.dim_x}")
        object.__setattr__(self, "cov", _to_tuple(a))

    @property
    def dim_y(self) -> int:
        return len(self.cov) - self.dim_x

    @cached_property
    def covariance(self) -> np.ndarray:
        """The joint covariance as a float64 array ``[dim_x + dim_y, dim_x + dim_y]``."""
        return np.array(self.cov, dtype=np.float64)

    def mutual_information(self) -> float:
        return _gaussian_mi(self.covariance, self.dim_x)

    def entropy_y(self) -> float:
        r""":math:`H(Y) = \frac12 \log\det(2\pi e \Sigma_{YY})` in nats."""
        syy = self.covariance[self.dim_x :, self.dim_x :]
        return 0.5 * (self.dim_y * math.log(2 * math.pi * math.e) + _logdet(syy))

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``x: [n, dim_x]``, ``y: [n, dim_y]`` (drawn in float64, cast)."""
        chol = torch.linalg.cholesky(_f64(self.covariance))
        z = torch.randn(n, chol.shape[0], generator=generator, dtype=torch.float64) @ chol.T
        z = z.to(dtype)
        return z[:, : self.dim_x], z[:, self.dim_x :]

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)``, ``x: [n, dim_x]``, ``y: [n, dim_y]`` -> ``[n]`` float64."""
        xy = torch.cat([_rows(x, self.dim_x, "x"), _rows(y, self.dim_y, "y")], dim=1)
        return _gaussian_logpdf(xy, self.covariance)

    def log_density_x(self, x: Tensor) -> Tensor:
        """``log p(x)``, ``x: [n, dim_x]`` -> ``[n]`` float64."""
        sxx = _sub(self.covariance, slice(None, self.dim_x))
        return _gaussian_logpdf(_rows(x, self.dim_x, "x"), sxx)

    def log_density_y(self, y: Tensor) -> Tensor:
        """``log p(y)``, ``y: [n, dim_y]`` -> ``[n]`` float64."""
        syy = _sub(self.covariance, slice(self.dim_x, None))
        return _gaussian_logpdf(_rows(y, self.dim_y, "y"), syy)


def one_v_one_normal(rho: float = 0.75) -> GeneralGaussian:
    """BMI's ``1v1-normal-<rho>``: a bivariate normal with unit variances and correlation rho."""
    return GeneralGaussian(((1.0, rho), (rho, 1.0)), dim_x=1)


def multinormal_dense(dim_x: int, dim_y: int, off_diag: float = 0.5) -> GeneralGaussian:
    """BMI's ``multinormal-dense``: unit variances, every pair of distinct coordinates
    (within x, within y and across) has covariance ``off_diag``:
    ``cov = (1 - off_diag) I + off_diag 11^T``, shape ``[dim_x + dim_y, dim_x + dim_y]``.
    """
    d = dim_x + dim_y
    return GeneralGaussian(np.eye(d) * (1.0 - off_diag) + off_diag, dim_x=dim_x)


def _lvm_correlation(
    dim_x: int,
    dim_y: int,
    n_interacting: int,
    alpha: float,
    lambd: float,
    epsilon: float = 1.0,
    beta: float = 0.0,
    eta: float = 0.0,
) -> np.ndarray:
    """Correlation matrix of BMI's Gaussian latent-variable model, ``[dim_x + dim_y]^2``.

    With i.i.d. N(0, 1) latents: ``alpha U_all`` enters every coordinate, ``beta U_X`` every
    x (``beta U_Y`` every y), ``lambd Z_i`` both x_i and y_i for ``i < n_interacting``,
    ``epsilon`` times a private noise every coordinate, and ``eta`` times another private
    noise every non-interacting coordinate (so all variances can be equal).
    """
    if not 0 <= n_interacting <= min(dim_x, dim_y):
        raise ValueError(
            f"n_interacting={n_interacting} must be in [0, min(dim_x, dim_y)={min(dim_x, dim_y)}]"
        )
    d = dim_x + dim_y
    cov = np.full((d, d), alpha**2)
    cov[:dim_x, :dim_x] += beta**2
    cov[dim_x:, dim_x:] += beta**2
    cov[np.diag_indices(d)] += epsilon**2
    for i in range(dim_x):
        cov[i, i] += lambd**2 if i < n_interacting else eta**2
    for j in range(dim_y):
        cov[dim_x + j, dim_x + j] += lambd**2 if j < n_interacting else eta**2
    for i in range(n_interacting):
        cov[i, dim_x + i] += lambd**2
        cov[dim_x + i, i] += lambd**2
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def multinormal_sparse(
    dim_x: int, dim_y: int, n_interacting: int = 2, strength: float = 2.0
) -> GeneralGaussian:
    """BMI's ``multinormal-sparse``: the latent-variable model with no dense terms
    (``alpha = beta = 0``), unit private noise (``epsilon = 1``) and
    ``lambd = eta = strength``, normalised to a correlation matrix. Every coordinate then has
    variance ``1 + strength^2``, and only the pairs ``(x_i, y_i)``, ``i < n_interacting``,
    are correlated, with correlation ``strength^2 / (1 + strength^2)`` (0.8 at strength 2).
    """
    corr = _lvm_correlation(
        dim_x, dim_y, n_interacting, alpha=0.0, lambd=strength, beta=0.0, eta=strength
    )
    return GeneralGaussian(corr, dim_x=dim_x)


# --------------------------------------------------------------------------------------------
# Student-t
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentT:
    r"""Multivariate Student-t with ``dof`` degrees of freedom, zero location and dispersion
    (scale) matrix ``dispersion`` ``[dim_x + dim_y]^2`` (default: identity). Not the
    covariance: that is ``dof / (dof - 2) * dispersion`` and exists only for ``dof > 2``.

    :math:`I(X; Y) = I_{\mathrm{Gauss}}(\mathrm{dispersion}) + h_{d_x} + h_{d_y} -
    h_{d_x + d_y}`, with :math:`h_k` the entropy of the standard k-variate t (see
    ``_student_entropy``); with identity dispersion the Gaussian part is zero, yet X and Y
    are dependent through the shared chi-square scale.
    """

    dim_x: int
    dim_y: int
    dof: float
    dispersion: Matrix | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.dim_x < 1 or self.dim_y < 1:
            raise ValueError(f"dim_x and dim_y must be >= 1, got {self.dim_x}, {self.dim_y}")
        if not (self.dof > 0 and math.isfinite(self.dof)):
            raise ValueError(
                f"dof (degrees of freedom) must be positive and finite, got {self.dof}"
            )
        d = self.dim_x + self.dim_y
        disp = np.eye(d) if self.dispersion is None else _as_matrix(self.dispersion, "dispersion")
        if disp.shape != (d, d):
            raise ValueError(f"dispersion must have shape ({d}, {d}), got {disp.shape}")
        object.__setattr__(self, "dispersion", _to_tuple(disp))

    @cached_property
    def scale(self) -> np.ndarray:
        """The dispersion matrix as a float64 array ``[dim_x + dim_y, dim_x + dim_y]``."""
        return np.array(self.dispersion, dtype=np.float64)

    def mi_gaussian(self) -> float:
        """MI of a Gaussian with covariance = the dispersion (0 for the identity)."""
        return _gaussian_mi(self.scale, self.dim_x)

    def mi_correction(self) -> float:
        """The dof- and dimension-only part of the MI (positive for any finite dof)."""
        return (
            _student_entropy(self.dim_x, self.dof)
            + _student_entropy(self.dim_y, self.dof)
            - _student_entropy(self.dim_x + self.dim_y, self.dof)
        )

    def mutual_information(self) -> float:
        return self.mi_gaussian() + self.mi_correction()

    def entropy_y(self) -> float:
        """:math:`H(Y) = h_{d_y} + \\frac12 \\log\\det \\Sigma_{YY}` in nats."""
        syy = _sub(self.scale, slice(self.dim_x, None))
        return _student_entropy(self.dim_y, self.dof) + 0.5 * _logdet(syy)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``x: [n, dim_x]``, ``y: [n, dim_y]``: ``z / sqrt(w / dof)`` with
        ``z ~ N(0, dispersion)`` and ``w ~ chi^2(dof)`` (drawn in float64, cast)."""
        chol = torch.linalg.cholesky(_f64(self.scale))
        z = torch.randn(n, chol.shape[0], generator=generator, dtype=torch.float64) @ chol.T
        half_dof = torch.full((n,), 0.5 * self.dof, dtype=torch.float64)
        # chi^2(dof) = 2 Gamma(dof / 2); the gamma sampler torch.distributions.Gamma uses.
        w = 2.0 * torch._standard_gamma(half_dof, generator=generator)
        xy = (z * torch.rsqrt(w / self.dof)[:, None]).to(dtype)
        return xy[:, : self.dim_x], xy[:, self.dim_x :]

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)``, ``x: [n, dim_x]``, ``y: [n, dim_y]`` -> ``[n]`` float64."""
        xy = torch.cat([_rows(x, self.dim_x, "x"), _rows(y, self.dim_y, "y")], dim=1)
        return _student_logpdf(xy, self.scale, self.dof)

    def log_density_x(self, x: Tensor) -> Tensor:
        """``log p(x)``, ``x: [n, dim_x]`` -> ``[n]`` float64 (a t with the same dof)."""
        sxx = _sub(self.scale, slice(None, self.dim_x))
        return _student_logpdf(_rows(x, self.dim_x, "x"), sxx, self.dof)

    def log_density_y(self, y: Tensor) -> Tensor:
        """``log p(y)``, ``y: [n, dim_y]`` -> ``[n]`` float64 (a t with the same dof)."""
        syy = _sub(self.scale, slice(self.dim_x, None))
        return _student_logpdf(_rows(y, self.dim_y, "y"), syy, self.dof)


# --------------------------------------------------------------------------------------------
# Additive uniform noise
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdditiveUniform:
    r"""``x ~ U(0, 1)``, ``n ~ U(-eps, eps)``, ``y = x + n`` (1-d each), for any ``eps > 0``.

    ``p(y) = (min(1, y + eps) - max(0, y - eps)) / (2 eps)`` on ``[-eps, 1 + eps]`` and
    :math:`H(Y | X) = \log 2\epsilon`. For ``eps <= 1/2`` the density is a trapezoid,
    :math:`H(Y) = \epsilon` and :math:`I = \epsilon - \log 2\epsilon`; for ``eps > 1/2`` it
    has two unit-length ramps around a plateau of height ``1 / (2 eps)``,
    :math:`H(Y) = \log 2\epsilon + 1 / (4\epsilon)` and :math:`I = 1 / (4\epsilon)`. The
    branches agree at ``eps = 1/2``.
    """

    epsilon: float

    def __post_init__(self) -> None:
        if not (self.epsilon > 0.0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be positive and finite, got {self.epsilon}")

    @property
    def dim_x(self) -> int:
        return 1

    @property
    def dim_y(self) -> int:
        return 1

    def mutual_information(self) -> float:
        eps = self.epsilon
        return eps - math.log(2.0 * eps) if eps <= 0.5 else 1.0 / (4.0 * eps)

    def entropy_y(self) -> float:
        """:math:`H(Y)` in nats."""
        return self.mutual_information() + math.log(2.0 * self.epsilon)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``x: [n, 1]``, ``y: [n, 1]`` (drawn in float64, cast)."""
        x = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        noise = 2.0 * torch.rand(n, 1, generator=generator, dtype=torch.float64) - 1.0
        y = x + self.epsilon * noise
        return x.to(dtype), y.to(dtype)

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)`` (``-inf`` off the support), ``[n, 1]`` each -> ``[n]`` float64."""
        x, y = _rows(x, 1, "x")[:, 0], _rows(y, 1, "y")[:, 0]
        inside = (x >= 0) & (x <= 1) & ((y - x).abs() <= self.epsilon)
        value = torch.full_like(x, -math.log(2.0 * self.epsilon))
        return torch.where(inside, value, torch.full_like(x, -math.inf))

    def log_density_x(self, x: Tensor) -> Tensor:
        """``log p(x)``: 0 on [0, 1], ``-inf`` elsewhere; ``[n, 1]`` -> ``[n]`` float64."""
        x = _rows(x, 1, "x")[:, 0]
        return torch.where((x >= 0) & (x <= 1), torch.zeros_like(x), torch.full_like(x, -math.inf))

    def log_density_y(self, y: Tensor) -> Tensor:
        """``log p(y)``, the trapezoid
        ``p(y) = (min(1, y + eps) - max(0, y - eps)) / (2 eps)`` on ``[-eps, 1 + eps]``;
        ``[n, 1]`` -> ``[n]`` float64."""
        y = _rows(y, 1, "y")[:, 0]
        eps = self.epsilon
        width = torch.clamp(y + eps, max=1.0) - torch.clamp(y - eps, min=0.0)
        return torch.log(torch.clamp(width, min=0.0) / (2.0 * eps))


# --------------------------------------------------------------------------------------------
# MI-preserving maps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bijection:
    """A strictly increasing map applied coordinate-wise, with its inverse.

    ``f(t)`` and ``f.inverse(t)`` take tensors of any shape and keep shape and dtype.
    """

    name: str
    forward: Callable[[Tensor], Tensor] = field(repr=False)
    inverse: Callable[[Tensor], Tensor] = field(repr=False)

    def __call__(self, t: Tensor) -> Tensor:
        return self.forward(t)


def _signed_power(t: Tensor, p: float) -> Tensor:
    return torch.sign(t) * t.abs() ** p


cube = Bijection("cube", lambda t: t**3, lambda t: _signed_power(t, 1.0 / 3.0))
half_cube = Bijection(
    "half_cube", lambda t: t * t.abs().sqrt(), lambda t: _signed_power(t, 2.0 / 3.0)
)
asinh = Bijection("asinh", torch.asinh, torch.sinh)
asinh3 = Bijection("asinh3", lambda t: torch.asinh(3.0 * t), lambda t: torch.sinh(t) / 3.0)
normal_cdf = Bijection("normal_cdf", torch.special.ndtr, torch.special.ndtri)
identity = Bijection("identity", lambda t: t, lambda t: t)
# cube: t^3; half_cube: t |t|^{1/2} (BMI's long-tailed map); asinh; asinh3: asinh(3t);
# normal_cdf: the standard normal CDF, onto (0, 1) -- it rounds to 1.0 above t ~ 8.3 in
# float64 and t ~ 5.4 in float32, where the inverse returns inf; identity.


@dataclass(frozen=True)
class Spiral:
    r"""BMI's spiral diffeomorphism of :math:`\mathbb{R}^{dim}`:
    :math:`x \mapsto \exp(s \|x\|^2 A)\, x`, with ``A`` the canonical so(dim) generator of
    the plane ``plane = (i, j)`` (``A[i, j] = -1``, ``A[j, i] = 1``): a rotation of the
    ``(x_i, x_j)`` plane by the angle :math:`s \|x\|^2`. Rotations keep the norm, so the
    inverse rotates back by :math:`-s \|y\|^2`.

    ``speed`` defaults to BMI's task value ``1 / dim`` (speed 1, normalised by the dimension);
    BMI's tasks use ``plane=(0, 1)`` for x and ``plane=(1, 2)`` for y.

    Acts on the last axis: ``t: [..., dim]`` -> ``[..., dim]``.
    """

    dim: int
    plane: tuple[int, int] = (0, 1)
    speed: float | None = None

    def __post_init__(self) -> None:
        i, j = self.plane
        if self.dim < 2 or not 0 <= i < j < self.dim:
            raise ValueError(
                f"need dim >= 2 and 0 <= i < j < dim; got dim={self.dim}, {self.plane}"
            )

    @property
    def angular_speed(self) -> float:
        return 1.0 / self.dim if self.speed is None else self.speed

    def _rotate(self, t: Tensor, sign: float) -> Tensor:
        if t.shape[-1] != self.dim:
            raise ValueError(f"Spiral({self.dim}) got last axis {t.shape[-1]}")
        i, j = self.plane
        angle = sign * self.angular_speed * (t**2).sum(-1)
        c, s = torch.cos(angle), torch.sin(angle)
        out = t.clone()
        out[..., i] = c * t[..., i] - s * t[..., j]
        out[..., j] = s * t[..., i] + c * t[..., j]
        return out

    def __call__(self, t: Tensor) -> Tensor:
        return self._rotate(t, 1.0)

    def inverse(self, t: Tensor) -> Tensor:
        return self._rotate(t, -1.0)


#: E[log |Z|] for Z ~ N(0, 1): -(gamma + log 2) / 2.
_E_LOG_ABS_NORMAL = -(0.5772156649015329 + math.log(2.0)) / 2.0

#: Expected log-Jacobian E[log |f'(Z)|] per coordinate of the maps above, Z ~ N(0, 1),
#: so that H(f(Y)) = H(Y) + d * shift is known for BA (y with standard normal coordinates).
LOG_JACOBIAN_SHIFT = {
    cube: math.log(3.0) + 2.0 * _E_LOG_ABS_NORMAL,
    half_cube: math.log(1.5) + 0.5 * _E_LOG_ABS_NORMAL,
    normal_cdf: -0.5 * _LOG_2PI - 0.5,
    identity: 0.0,
}


def _name(f: object) -> str:
    return getattr(f, "name", None) or getattr(f, "__name__", None) or repr(f)


def _y_standard_normal(base: object) -> bool:
    """Whether every y coordinate of ``base`` is N(0, 1) (what ``LOG_JACOBIAN_SHIFT`` needs)."""
    if isinstance(base, CorrelatedGaussian):
        return True
    if isinstance(base, GeneralGaussian):
        return bool(np.allclose(np.diag(base.covariance)[base.dim_x :], 1.0))
    return False


@dataclass(frozen=True)
class Transformed:
    """A sampler with invertible maps applied to x and y: the MI does not change.

    ``fx`` / ``fy`` act on ``[n, dim_x]`` / ``[n, dim_y]`` tensors (a :class:`Bijection` or a
    :class:`Spiral` of the right dimension, or any injective smooth callable).
    """

    base: Sampler
    fx: Callable[[Tensor], Tensor] = identity
    fy: Callable[[Tensor], Tensor] = identity

    @property
    def dim_x(self) -> int:
        return self.base.dim_x

    @property
    def dim_y(self) -> int:
        return self.base.dim_y

    def mutual_information(self) -> float:
        return self.base.mutual_information()

    def entropy_y(self) -> float:
        """:math:`H(f_y(Y))` in nats (known for the maps in ``LOG_JACOBIAN_SHIFT``, on a base
        whose y coordinates are standard normal, or for any base when ``fy`` is identity)."""
        if self.fy is identity:
            return self.base.entropy_y()  # type: ignore[attr-defined]
        if self.fy not in LOG_JACOBIAN_SHIFT:
            raise ValueError(f"H(Y) is not known for the map {_name(self.fy)}")
        if not _y_standard_normal(self.base):
            raise ValueError(
                f"H(Y) after {_name(self.fy)} is known only when the base's y is standard normal"
            )
        shift = LOG_JACOBIAN_SHIFT[self.fy]  # type: ignore[index]
        return self.base.entropy_y() + self.base.dim_y * shift  # type: ignore[attr-defined]

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``fx(x): [n, dim_x]``, ``fy(y): [n, dim_y]``."""
        x, y = self.base.sample(n, generator, dtype=dtype)
        return self.fx(x), self.fy(y)


# --------------------------------------------------------------------------------------------
# The "Beyond Normal" tasks
# --------------------------------------------------------------------------------------------

#: Eight tasks of the BMI benchmark by their short names (BMI's ids add parameters, e.g.
#: ``multinormal-sparse-5-5-2-2.0``, ``multinormal-dense-5-5-0.5``). Each value builds the
#: sampler. ``half_cube-*`` and ``asinh-*`` apply the map to both x and y, as BMI does.
BMI_TASKS: dict[str, Callable[[], Sampler]] = {
    "1v1-normal-0.75": lambda: one_v_one_normal(0.75),
    "1v1-additive-0.1": lambda: AdditiveUniform(0.1),
    "multinormal-dense-5-5": lambda: multinormal_dense(5, 5),
    "multinormal-sparse-5-5": lambda: multinormal_sparse(5, 5),
    "half_cube-sparse-5-5": lambda: Transformed(multinormal_sparse(5, 5), half_cube, half_cube),
    "multinormal-dense-25-25": lambda: multinormal_dense(25, 25),
    "multinormal-sparse-25-25": lambda: multinormal_sparse(25, 25),
    "asinh-student-identity-5-5-2": lambda: Transformed(StudentT(5, 5, dof=2), asinh, asinh),
}
