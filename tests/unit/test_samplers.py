"""The closed-form MI of every sampler in ``bench.accuracy.samplers`` against Monte Carlo with
the true densities, the maps' inverses, and the "Beyond Normal" task definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.accuracy.samplers import (
    BMI_TASKS,
    LOG_JACOBIAN_SHIFT,
    AdditiveUniform,
    CorrelatedGaussian,
    GeneralGaussian,
    Spiral,
    StudentT,
    Transformed,
    asinh,
    asinh3,
    cube,
    half_cube,
    identity,
    multinormal_dense,
    multinormal_sparse,
    normal_cdf,
    one_v_one_normal,
)

torch.set_num_threads(1)

N_MC = 200_000
MAPS = [cube, half_cube, asinh, asinh3, normal_cdf, identity]


def _random_cov(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.3 * np.eye(d)


BASES = {
    "correlated-3-0.6": lambda: CorrelatedGaussian(3, 0.6),
    "general-2-3": lambda: GeneralGaussian(_random_cov(5, 0), dim_x=2),
    "1v1-normal-0.75": lambda: one_v_one_normal(0.75),
    "dense-5-5": lambda: multinormal_dense(5, 5),
    "sparse-5-5": lambda: multinormal_sparse(5, 5),
    "dense-25-25": lambda: multinormal_dense(25, 25),
    "sparse-25-25": lambda: multinormal_sparse(25, 25),
    "student-5-5-2": lambda: StudentT(5, 5, dof=2),
    "student-1-1-1": lambda: StudentT(1, 1, dof=1),
    "student-2-3-3.5-dispersion": lambda: StudentT(2, 3, dof=3.5, dispersion=_random_cov(5, 1)),
    "additive-0.1": lambda: AdditiveUniform(0.1),
    "additive-0.5": lambda: AdditiveUniform(0.5),
}


def _pmi(sampler, x, y) -> torch.Tensor:
    """Pointwise MI log p(x, y) - log p(x) - log p(y), [n] float64."""
    return sampler.log_density(x, y) - sampler.log_density_x(x) - sampler.log_density_y(y)


def _assert_mc_agrees(pmi: torch.Tensor, truth: float) -> None:
    assert torch.isfinite(pmi).all(), "samples must lie in the support of the true density"
    mean, se = pmi.mean().item(), pmi.std().item() / math.sqrt(len(pmi))
    assert abs(mean - truth) < 4 * se + 1e-9, f"MC {mean:.4f} +- {se:.4f} vs closed form {truth}"


@pytest.mark.parametrize("name", sorted(BASES))
def test_closed_form_mi_matches_monte_carlo_with_true_densities(name):
    sampler = BASES[name]()
    x, y = sampler.sample(N_MC, torch.Generator().manual_seed(11), dtype=torch.float64)
    _assert_mc_agrees(_pmi(sampler, x, y), sampler.mutual_information())


@pytest.mark.parametrize("name", sorted(set(BASES) - {"dense-25-25", "sparse-25-25"}))
def test_marginal_densities_are_marginals_of_the_joint(name):
    """E_{p(x)p(y)}[p(x,y) / (p(x)p(y))] = 1 checks the three densities fit together (MC
    over shuffled pairs; the 50-d tasks are left out, their ratio is too heavy-tailed)."""
    sampler = BASES[name]()
    g = torch.Generator().manual_seed(5)
    x, y = sampler.sample(50_000, g, dtype=torch.float64)
    y = y[torch.randperm(len(y), generator=g)]
    ratio = torch.exp(_pmi(sampler, x, y))
    ratio = torch.where(torch.isnan(ratio), torch.zeros_like(ratio), ratio)  # -inf - -inf
    se = ratio.std().item() / math.sqrt(len(ratio))
    assert abs(ratio.mean().item() - 1.0) < 5 * se + 0.02


@pytest.mark.parametrize("name", sorted(BMI_TASKS))
def test_bmi_task_samples_shape_dtype_and_determinism(name):
    sampler = BMI_TASKS[name]()
    x, y = sampler.sample(64, torch.Generator().manual_seed(3))
    assert x.shape == (64, sampler.dim_x) and y.shape == (64, sampler.dim_y)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    x2, y2 = sampler.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = sampler.sample(64, torch.Generator().manual_seed(4))
    assert not torch.equal(x, x3)
    x64, _ = sampler.sample(5, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x64.dtype == torch.float64


#: True MI (nats) of the eight tasks from formulas independent of the code under test.
_RHO_SPARSE = 4.0 / 5.0  # strength^2 / (1 + strength^2) at strength 2


def _equicorrelation_logdet(m: int, rho: float) -> float:
    return (m - 1) * math.log(1 - rho) + math.log(1 + (m - 1) * rho)


def _dense_mi(d: int, rho: float = 0.5) -> float:
    return _equicorrelation_logdet(d, rho) - 0.5 * _equicorrelation_logdet(2 * d, rho)


EXPECTED_BMI_MI = {
    "1v1-normal-0.75": (-0.5 * math.log(1 - 0.75**2), 0.41334),
    "1v1-additive-0.1": (0.1 - math.log(0.2), 1.70944),
    "multinormal-dense-5-5": (_dense_mi(5), 0.59281),
    "multinormal-sparse-5-5": (-2 * 0.5 * math.log(1 - _RHO_SPARSE**2), 1.02165),
    "half_cube-sparse-5-5": (-math.log(1 - _RHO_SPARSE**2), 1.02165),
    "multinormal-dense-25-25": (_dense_mi(25), 1.29218),
    "multinormal-sparse-25-25": (-math.log(1 - _RHO_SPARSE**2), 1.02165),
    "asinh-student-identity-5-5-2": (None, 0.44815),
}


def test_bmi_tasks_are_exactly_the_eight_and_their_mi_matches_the_formulas():
    assert set(BMI_TASKS) == set(EXPECTED_BMI_MI)
    for name, (formula, rounded) in EXPECTED_BMI_MI.items():
        mi = BMI_TASKS[name]().mutual_information()
        assert mi == pytest.approx(rounded, abs=1e-5), name
        if formula is not None:
            assert mi == pytest.approx(formula, rel=1e-10), name


def test_bmi_task_definitions():
    sparse = multinormal_sparse(5, 5).covariance
    expected = np.eye(10)
    expected[0, 5] = expected[5, 0] = expected[1, 6] = expected[6, 1] = 0.8
    np.testing.assert_allclose(sparse, expected, atol=1e-12)
    dense = multinormal_dense(2, 3).covariance
    np.testing.assert_allclose(dense, 0.5 * np.eye(5) + 0.5)
    half = BMI_TASKS["half_cube-sparse-5-5"]()
    assert half.fx is half_cube and half.fy is half_cube
    student = BMI_TASKS["asinh-student-identity-5-5-2"]()
    assert student.fx is asinh and student.fy is asinh
    assert student.base == StudentT(5, 5, dof=2)
    assert student.base.mi_gaussian() == pytest.approx(0.0, abs=1e-12)


def test_student_t_matches_gaussian_as_dof_grows_and_correction_is_positive():
    cov = _random_cov(4, 2)
    assert StudentT(2, 2, dof=1e7, dispersion=cov).mutual_information() == pytest.approx(
        GeneralGaussian(cov, dim_x=2).mutual_information(), abs=1e-5
    )
    for dof in (0.5, 1, 2, 5, 30):
        assert StudentT(3, 2, dof=dof).mi_correction() > 0


def test_entropy_y_against_monte_carlo():
    g = torch.Generator().manual_seed(2)
    for sampler in (
        multinormal_sparse(3, 2),
        GeneralGaussian(_random_cov(4, 3), dim_x=1),
        StudentT(2, 3, dof=3.0, dispersion=_random_cov(5, 4)),
        AdditiveUniform(0.2),
    ):
        _, y = sampler.sample(100_000, g, dtype=torch.float64)
        neg_log = -sampler.log_density_y(y)
        se = neg_log.std().item() / math.sqrt(len(neg_log))
        assert abs(neg_log.mean().item() - sampler.entropy_y()) < 4 * se


# ----- maps ------------------------------------------------------------------------------


@pytest.mark.parametrize("f", MAPS, ids=lambda f: f.name)
def test_map_inverse_and_strict_monotonicity(f):
    scale = 1.0 if f is normal_cdf else 2.0  # the CDF saturates to 1.0 above ~8 in float64
    t = scale * torch.randn(10_000, 3, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(f.inverse(f(t)), t, atol=1e-5, rtol=0)
    grid = torch.linspace(-5, 5, 20_001, dtype=torch.float64)
    assert (torch.diff(f(grid)) > 0).all(), "strictly increasing"
    if f is not normal_cdf:  # onto R: the inverse works on the image side too
        torch.testing.assert_close(f(f.inverse(t)), t, atol=1e-5, rtol=1e-6)
    else:
        u = torch.rand(10_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        u = u.clamp(1e-6, 1 - 1e-6)
        torch.testing.assert_close(f(f.inverse(u)), u, atol=1e-9, rtol=0)
        assert (f(grid) > 0).all() and (f(grid) < 1).all()
    assert f(t.float()).dtype == torch.float32 and f(t).shape == t.shape


def test_map_values():
    t = torch.tensor([-4.0, -1.0, 0.0, 0.25, 9.0], dtype=torch.float64)
    torch.testing.assert_close(half_cube(t), torch.tensor([-8.0, -1.0, 0.0, 0.125, 27.0]).double())
    torch.testing.assert_close(cube(t), t**3)
    torch.testing.assert_close(asinh(t), torch.asinh(t))
    torch.testing.assert_close(asinh3(t), torch.asinh(3 * t))
    torch.testing.assert_close(
        normal_cdf(torch.tensor([0.0, 1.0]).double()),
        torch.tensor([0.5, 0.8413447460685429]).double(),
    )


@pytest.mark.parametrize("dim,plane", [(2, (0, 1)), (5, (0, 1)), (5, (1, 2)), (25, (1, 2))])
def test_spiral_is_a_norm_preserving_bijection(dim, plane):
    f = Spiral(dim, plane)
    assert f.angular_speed == pytest.approx(1.0 / dim)  # BMI's normalised default
    t = 1.5 * torch.randn(
        5_000, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64
    )
    out = f(t)
    torch.testing.assert_close(out.norm(dim=1), t.norm(dim=1))
    torch.testing.assert_close(f.inverse(out), t, atol=1e-5, rtol=0)
    torch.testing.assert_close(f(f.inverse(t)), t, atol=1e-5, rtol=0)
    others = [k for k in range(dim) if k not in plane]
    torch.testing.assert_close(out[:, others], t[:, others])
    assert (out - t).abs().max() > 0.1, "the spiral actually moves points"
    # the angle grows with |x|^2: e_i scaled by r lands at angle r^2 / dim
    e = torch.zeros(1, dim, dtype=torch.float64)
    e[0, plane[0]] = 2.0
    turned = f(e)[0]
    angle = math.atan2(turned[plane[1]].item(), turned[plane[0]].item())
    assert angle == pytest.approx(4.0 / dim)


@pytest.mark.parametrize("task", ["half_cube-sparse-5-5", "asinh-student-identity-5-5-2"])
def test_transformed_keeps_mi_and_inverts_to_base_samples(task):
    sampler = BMI_TASKS[task]()
    assert sampler.mutual_information() == sampler.base.mutual_information()
    g = torch.Generator().manual_seed(9)
    x, y = sampler.sample(N_MC, g, dtype=torch.float64)
    bx, by = sampler.base.sample(N_MC, torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(sampler.fx.inverse(x), bx, atol=1e-8, rtol=1e-8)
    # PMI is invariant under the maps: MC on the transformed sample via the inverse maps
    pmi = _pmi(sampler.base, sampler.fx.inverse(x), sampler.fy.inverse(y))
    _assert_mc_agrees(pmi, sampler.mutual_information())


def test_transformed_spiral_keeps_mi():
    base = multinormal_sparse(3, 4)
    fx, fy = Spiral(3, (0, 1)), Spiral(4, (1, 2))
    sampler = Transformed(base, fx, fy)
    x, y = sampler.sample(N_MC, torch.Generator().manual_seed(1), dtype=torch.float64)
    _assert_mc_agrees(_pmi(base, fx.inverse(x), fy.inverse(y)), sampler.mutual_information())


def test_log_jacobian_shifts_against_monte_carlo():
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z.requires_grad_(True)
    for f, shift in LOG_JACOBIAN_SHIFT.items():
        (grad,) = torch.autograd.grad(f(z).sum(), z)
        log_jac = grad.abs().log().detach()
        se = log_jac.std().item() / math.sqrt(len(z))
        assert abs(log_jac.mean().item() - shift) < 4 * se + 1e-12, f.name


def test_transformed_entropy_y_and_existing_callers():
    g = CorrelatedGaussian.with_mi(5, 2.0)
    assert Transformed(g, fx=asinh3).entropy_y() == g.entropy_y()
    assert Transformed(g, fy=cube).entropy_y() == pytest.approx(
        g.entropy_y() + 5 * LOG_JACOBIAN_SHIFT[cube]
    )
    # the uniform marginals of normal_cdf(N(0, 1)) have zero entropy
    assert Transformed(multinormal_sparse(2, 3), fy=normal_cdf).entropy_y() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="asinh"):
        Transformed(g, fy=asinh).entropy_y()
    with pytest.raises(ValueError, match="standard normal"):
        Transformed(StudentT(2, 2, dof=3), fy=cube).entropy_y()
    # CorrelatedGaussian keeps its float32 stream: same numbers as before the extension
    gen = torch.Generator().manual_seed(0)
    x, y = CorrelatedGaussian(2, 0.5).sample(4, torch.Generator().manual_seed(0))
    x0 = torch.randn(4, 2, generator=gen)
    noise = torch.randn(4, 2, generator=gen)
    assert torch.equal(x, x0) and torch.equal(y, 0.5 * x0 + math.sqrt(0.75) * noise)


# ----- parameter checks ------------------------------------------------------------------


def test_bad_parameters_raise_clear_value_errors():
    for eps in (0.0, -0.5, math.inf):
        with pytest.raises(ValueError, match="epsilon must be positive and finite"):
            AdditiveUniform(eps)
    for dof in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="dof"):
            StudentT(2, 2, dof=dof)
    with pytest.raises(ValueError, match="positive definite"):
        GeneralGaussian(((1.0, 1.0), (1.0, 1.0)), dim_x=1)
    with pytest.raises(ValueError, match="positive definite"):
        multinormal_dense(2, 2, off_diag=-0.5)
    with pytest.raises(ValueError, match="positive definite"):
        StudentT(1, 1, dof=2, dispersion=((1.0, 2.0), (2.0, 1.0)))
    with pytest.raises(ValueError, match="symmetric"):
        GeneralGaussian(((1.0, 0.1), (0.2, 1.0)), dim_x=1)
    with pytest.raises(ValueError, match="dim_x"):
        GeneralGaussian(np.eye(3), dim_x=3)
    with pytest.raises(ValueError, match="shape"):
        StudentT(1, 2, dof=2, dispersion=np.eye(2))
    with pytest.raises(ValueError, match="n_interacting"):
        multinormal_sparse(2, 5, n_interacting=3)
    with pytest.raises(ValueError, match="dim"):
        Spiral(3, (1, 1))
    with pytest.raises(ValueError, match="shape"):
        multinormal_sparse(2, 3).log_density(torch.zeros(4, 3), torch.zeros(4, 3))
