"""Closed-form elliptical copulas (``mist_core.estimators.copula``): the densities against
scipy and against their own normalisation, the closed-form MI against known truths, the
finite-sample bias correction against Monte Carlo, and the Student-t degrees of freedom
recovered by profile likelihood. Closed forms only: the whole file runs in a few seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bench.accuracy.samplers import (
    GeneralGaussian,
    StudentT,
    multinormal_dense,
    multinormal_sparse,
    one_v_one_normal,
)
from mist_core.estimators.copula import (
    EllipticalCopula,
    fit_gaussian_copula,
    fit_student_copula,
    logdet_bias,
    student_mi_correction,
)
from mist_core.marginals import Gaussianizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small float64 linear algebra: a second thread only adds contention (10x slower on a
    busy 2-core machine)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _gaussianised(sampler, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of ``sampler``, every coordinate Gaussianised (float64)."""
    x, y = sampler.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Gaussianizer(x)(x), Gaussianizer(y)(y)


def _canonical_std_error(sampler, n: int) -> float:
    """Asymptotic standard error of the Gaussian MI fitted on ``n`` samples:
    ``sqrt(sum_i rho_i^2 / n)`` over the canonical correlations ``rho_i`` (the delta method
    on ``-1/2 log(1 - r^2)`` with ``Var r = (1 - rho^2)^2 / n``, per canonical pair; normal
    scores lose no efficiency on Gaussian data)."""
    cov = sampler.covariance
    dx = sampler.dim_x
    sxx, syy, sxy = cov[:dx, :dx], cov[dx:, dx:], cov[:dx, dx:]
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    rho2 = np.clip(np.linalg.eigvals(m).real, 0.0, 1.0)
    return math.sqrt(rho2.sum() / n)


# -- the Gaussian copula ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler", [one_v_one_normal(0.75), multinormal_sparse(3, 3)], ids=["bn-0.75", "sparse-3-3"]
)
def test_gaussian_copula_mi_within_three_standard_errors(sampler):
    """N = 5000 Gaussianised samples: the standard error is 0.011 nats for the bivariate
    normal (rho = 0.75) and 0.016 for the two pairs of rho = 0.8 (see
    ``_canonical_std_error``); 3 of them leave room for noise, not for a lost pair or a
    wrong log-determinant (>= 0.2 nats)."""
    n = 5000
    zx, zy = _gaussianised(sampler, n, seed=0)
    copula = fit_gaussian_copula(zx, zy)
    assert copula.name == "gaussian-copula" and math.isinf(copula.dof)
    truth = sampler.mutual_information()
    assert copula.mi() == pytest.approx(truth, abs=3 * _canonical_std_error(sampler, n))
    assert copula.plug_in_mi() - copula.mi() == pytest.approx(copula.bias())
    assert copula.bias() > 0


def test_gaussian_copula_densities_match_scipy_and_factorise():
    zx, zy = _gaussianised(multinormal_sparse(2, 3), 500, seed=1)
    copula = fit_gaussian_copula(zx, zy)
    corr = copula.corr.numpy()
    z = torch.cat([zx, zy], 1).numpy()
    joint = stats.multivariate_normal(np.zeros(5), corr).logpdf(z)
    marginal_x = stats.multivariate_normal(np.zeros(2), corr[:2, :2]).logpdf(z[:, :2])
    marginal_y = stats.multivariate_normal(np.zeros(3), corr[2:, 2:]).logpdf(z[:, 2:])
    np.testing.assert_allclose(copula.log_joint(zx, zy).numpy(), joint, rtol=0, atol=1e-10)
    np.testing.assert_allclose(copula.log_marginal_x(zx).numpy(), marginal_x, atol=1e-10)
    np.testing.assert_allclose(copula.log_marginal_y(zy).numpy(), marginal_y, atol=1e-10)
    identity = copula.log_marginal_x(zx) + copula.log_conditional(zx, zy)
    torch.testing.assert_close(copula.log_joint(zx, zy), identity, rtol=0, atol=1e-10)


def _conditional_mass(copula: EllipticalCopula, z_x: float, bound: float) -> float:
    """Trapezoid integral of ``q(z_y | z_x)`` over ``z_y`` in ``[-bound, bound]``, step 1e-3."""
    grid = torch.linspace(-bound, bound, int(2000 * bound) + 1, dtype=torch.float64)
    given = torch.full((len(grid), 1), z_x, dtype=torch.float64)
    log_density = copula.log_conditional(given, grid[:, None])
    assert torch.isfinite(log_density).all()
    return float(torch.trapezoid(log_density.exp(), grid))


@pytest.mark.parametrize("z_x", [0.0, 1.5, -3.0, 5.0])
def test_gaussian_copula_conditional_integrates_to_one(z_x):
    """Outside [-10, 10] a conditional normal of standard deviation <= 1 centred within
    |5| has mass < 1e-7; the trapezoid error at step 1e-3 on a smooth density is < 1e-7."""
    zx, zy = _gaussianised(one_v_one_normal(0.75), 2000, seed=2)
    assert _conditional_mass(fit_gaussian_copula(zx, zy), z_x, 10.0) == pytest.approx(
        1.0, abs=1e-6
    )


# -- the Student-t copula ---------------------------------------------------------------------


def test_student_copula_densities_match_scipy_and_factorise():
    """log q(z) = log t_nu(t; R) - sum_j log t_nu(t_j) + sum_j log phi(z_j), with
    t_j = F_nu^-1(Phi(z_j)): the copula density times the normal marginals."""
    x, y = StudentT(2, 2, dof=2.0).sample(400, torch.Generator().manual_seed(3), torch.float64)
    zx, zy = Gaussianizer(x)(x), Gaussianizer(y)(y)
    corr = np.array([[1.0, 0.2, 0.3, 0.0], [0.2, 1.0, 0.1, 0.4], [0.3, 0.1, 1.0, 0.2]])
    corr = np.vstack([corr, [0.0, 0.4, 0.2, 1.0]])
    copula = EllipticalCopula(torch.from_numpy(corr), 2.5, 2, 400)
    z = torch.cat([zx, zy], 1).numpy()
    t = stats.t.ppf(stats.norm.cdf(z), 2.5)
    expected = (
        stats.multivariate_t(np.zeros(4), corr, df=2.5).logpdf(t)
        - stats.t.logpdf(t, 2.5).sum(1)
        + stats.norm.logpdf(z).sum(1)
    )
    np.testing.assert_allclose(copula.log_joint(zx, zy).numpy(), expected, rtol=0, atol=1e-8)
    identity = copula.log_marginal_x(zx) + copula.log_conditional(zx, zy)
    torch.testing.assert_close(copula.log_joint(zx, zy), identity, rtol=0, atol=1e-10)


@pytest.mark.parametrize("z_x", [0.0, 1.5, -3.0, 5.0])
def test_student_copula_conditional_integrates_to_one(z_x):
    """dof 2, fitted on samples. The t copula's conditional has heavier tails in z_y than a
    normal, and a sharper peak near the corners, so the range is [-12, 12] and the
    tolerance 1e-5 (measured: within 1e-13 of 1; the mass beyond |z_y| = 12 is that of
    u < Phi(-12) ~ 2e-33 under a polynomial-tailed conditional, far below it)."""
    x, y = StudentT(1, 1, dof=2.0).sample(2000, torch.Generator().manual_seed(4), torch.float64)
    copula = fit_student_copula(Gaussianizer(x)(x), Gaussianizer(y)(y), dofs=(2.0,))
    assert copula.dof == 2.0 and copula.name == "student-copula"
    assert _conditional_mass(copula, z_x, 12.0) == pytest.approx(1.0, abs=1e-5)


def test_student_copula_recovers_dof_and_mi():
    """StudentT(3, 3, dof=2), N = 5000: I = 0.2909 nats, all of it tail dependence (the
    dispersion is the identity, so the Gaussian copula sees almost none). Measured: dof
    1.98, MI 0.294."""
    sampler = StudentT(3, 3, dof=2.0)
    copula = fit_student_copula(*_gaussianised(sampler, 5000, seed=0))
    assert 1.6 <= copula.dof <= 2.5
    assert sampler.mutual_information() == pytest.approx(0.2909, abs=1e-4)
    assert copula.mi() == pytest.approx(0.2909, abs=0.03)


def test_student_copula_on_gaussian_data_has_many_dof():
    sampler = multinormal_sparse(3, 3)
    copula = fit_student_copula(*_gaussianised(sampler, 5000, seed=0))
    assert copula.dof >= 20
    assert copula.mi() == pytest.approx(sampler.mutual_information(), abs=0.05)


# -- the finite-sample bias -------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler",
    [multinormal_dense(10, 10), GeneralGaussian(np.eye(20), dim_x=10)],
    ids=["dense-10-10", "independent-10-10"],
)
def test_bias_correction_removes_the_plug_in_excess(sampler):
    """30 seeds of N = 300 from a 10 x 10 Gaussian (known marginals, as the correction
    assumes): the plug-in MI is high by about dx dy / 2N = 0.167 nats (exactly: ``bias()``,
    0.173), 15 Monte-Carlo standard errors; the corrected MI lands within 3 of them."""
    n, seeds, truth = 300, 30, sampler.mutual_information()
    plug_in, corrected = [], []
    for seed in range(seeds):
        x, y = sampler.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
        copula = fit_gaussian_copula(x, y)
        plug_in.append(copula.plug_in_mi())
        corrected.append(copula.mi())
    plug_in, corrected = np.array(plug_in), np.array(corrected)
    band = 3 * corrected.std(ddof=1) / math.sqrt(seeds)
    assert copula.bias() == pytest.approx(10 * 10 / (2 * n), rel=0.1)
    assert plug_in.mean() - truth > 0.1  # the bias the correction must remove is real
    assert plug_in.mean() - truth == pytest.approx(copula.bias(), abs=band)
    assert corrected.mean() == pytest.approx(truth, abs=band)


def test_logdet_bias_matches_wishart_monte_carlo():
    """E[log det S] - log det I for the sample covariance S (divided by n - 1, mean removed)
    of p = 5 standard normal coordinates from n = 50 samples, over 2000 draws; tolerance:
    4 Monte-Carlo standard errors (~0.03 nats against a bias of -0.6)."""
    p, n, draws = 5, 50, 2000
    samples = torch.randn(
        draws, n, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    centred = samples - samples.mean(1, keepdim=True)
    s = centred.transpose(1, 2) @ centred / (n - 1)
    logdets = torch.linalg.slogdet(s)[1]
    error = float(logdets.std() / math.sqrt(draws))
    expected = logdet_bias(p, n)
    assert expected < -0.3
    assert float(logdets.mean()) == pytest.approx(expected, abs=4 * error)
    assert logdet_bias(0, n) == 0.0


def test_student_mi_correction_matches_published_values():
    """Beyond Normal's Student-t tasks (/work/shared/bmi_tasks.md): c(1, 1, 1) = 0.22417
    (student-identity-1-1-1) and c(2, 5, 5) = 0.4482 (student-identity-5-5-2)."""
    assert student_mi_correction(1.0, 1, 1) == pytest.approx(0.22417, abs=5e-5)
    assert student_mi_correction(2.0, 5, 5) == pytest.approx(0.4482, abs=5e-5)
    assert student_mi_correction(math.inf, 3, 2) == 0.0
    assert student_mi_correction(1e6, 3, 2) == pytest.approx(0.0, abs=1e-4)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fit", [fit_gaussian_copula, fit_student_copula])
def test_too_few_samples_or_unpaired_inputs_raise(fit):
    with pytest.raises(ValueError, match="5 samples are too few to fit a copula of 6 coord"):
        fit(torch.randn(5, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="paired"):
        fit(torch.randn(20, 3), torch.randn(21, 3))
    with pytest.raises(ValueError, match="paired"):
        fit(torch.randn(20), torch.randn(20))
