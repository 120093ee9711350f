"""The 40 "Beyond Normal" v1 tasks in ``bench.accuracy.bmi40``: ids, order and published true
MI, sampling contracts, and the maps the tasks add (wiggly, bimodal, Swiss roll) and the
additive-noise sampler for ``eps > 1/2``."""

from __future__ import annotations

import math

import pytest
import torch

from bench.accuracy.bmi40 import (
    BMI40_FAMILY,
    BMI40_TASKS,
    MappedSampler,
    bimodal_x,
    bimodal_y,
    swissroll,
    wiggly_x,
    wiggly_y,
)
from bench.accuracy.samplers import (
    AdditiveUniform,
    Spiral,
    multinormal_sparse,
    normal_cdf,
    one_v_one_normal,
)

torch.set_num_threads(1)

#: The task list of BMI v1 in order, with the true MI (nats, 4 decimals) as published.
EXPECTED = [
    ("1v1-normal-0.75", 0.4133),
    ("normal_cdf-1v1-normal-0.75", 0.4133),
    ("1v1-additive-0.1", 1.7094),
    ("1v1-additive-0.75", 0.3333),
    ("1v1-bimodal-0.75", 0.4133),
    ("wiggly-1v1-normal-0.75", 0.4133),
    ("half_cube-1v1-normal-0.75", 0.4133),
    ("student-identity-1-1-1", 0.2242),
    ("asinh-student-identity-1-1-1", 0.2242),
    ("swissroll_x-normal_cdf-1v1-normal-0.75", 0.4133),
    ("multinormal-dense-2-2-0.5", 0.2939),
    ("multinormal-dense-3-3-0.5", 0.4133),
    ("multinormal-dense-5-5-0.5", 0.5928),
    ("multinormal-dense-25-25-0.5", 1.2922),
    ("multinormal-dense-50-50-0.5", 1.6243),
    ("multinormal-sparse-2-2-2-2.0", 1.0217),
    ("multinormal-sparse-3-3-2-2.0", 1.0217),
    ("multinormal-sparse-5-5-2-2.0", 1.0217),
    ("multinormal-sparse-25-25-2-2.0", 1.0217),
    ("student-identity-2-2-1", 0.4319),
    ("student-identity-2-2-2", 0.1931),
    ("student-identity-3-3-2", 0.2909),
    ("student-identity-3-3-3", 0.1787),
    ("student-identity-5-5-2", 0.4482),
    ("student-identity-5-5-3", 0.2985),
    ("normal_cdf-multinormal-sparse-3-3-2-2.0", 1.0217),
    ("normal_cdf-multinormal-sparse-5-5-2-2.0", 1.0217),
    ("normal_cdf-multinormal-sparse-25-25-2-2.0", 1.0217),
    ("half_cube-multinormal-sparse-3-3-2-2.0", 1.0217),
    ("half_cube-multinormal-sparse-5-5-2-2.0", 1.0217),
    ("half_cube-multinormal-sparse-25-25-2-2.0", 1.0217),
    ("spiral-multinormal-sparse-3-3-2-2.0", 1.0217),
    ("spiral-multinormal-sparse-5-5-2-2.0", 1.0217),
    ("spiral-multinormal-sparse-25-25-2-2.0", 1.0217),
    ("spiral-normal_cdf-multinormal-sparse-3-3-2-2.0", 1.0217),
    ("spiral-normal_cdf-multinormal-sparse-5-5-2-2.0", 1.0217),
    ("spiral-normal_cdf-multinormal-sparse-25-25-2-2.0", 1.0217),
    ("asinh-student-identity-2-2-1", 0.4319),
    ("asinh-student-identity-3-3-2", 0.2909),
    ("asinh-student-identity-5-5-2", 0.4482),
]

#: (dim_x, dim_y) of every task, from the ids (the Swiss roll embeds x in the plane).
DIMS = {name: (1, 1) for name, _ in EXPECTED[:9]}
DIMS["swissroll_x-normal_cdf-1v1-normal-0.75"] = (2, 1)
for _name, _ in EXPECTED[10:]:
    _d = int(_name.split("-")[-4 if "sparse" in _name else -3])
    DIMS[_name] = (_d, _d)

COPULA = [name for name, family in BMI40_FAMILY.items() if family == "copula"]


def test_exactly_the_forty_ids_in_order_with_the_published_mi():
    assert list(BMI40_TASKS) == [name for name, _ in EXPECTED]
    for name, published in EXPECTED:
        mi = BMI40_TASKS[name]().mutual_information()
        assert abs(mi - published) <= 5e-5 + 1e-12, f"{name}: {mi:.6f} vs {published}"


def test_families():
    assert list(BMI40_FAMILY) == list(BMI40_TASKS)
    counts = {f: list(BMI40_FAMILY.values()).count(f) for f in set(BMI40_FAMILY.values())}
    assert counts == {
        "gaussian": 10,
        "copula": 10,
        "student": 11,
        "additive": 2,
        "swissroll": 1,
        "spiral": 6,
    }
    assert sorted(COPULA) == sorted(
        [
            "normal_cdf-1v1-normal-0.75",
            "1v1-bimodal-0.75",
            "wiggly-1v1-normal-0.75",
            "half_cube-1v1-normal-0.75",
        ]
        + [
            f"{m}-multinormal-sparse-{d}-{d}-2-2.0"
            for m in ("normal_cdf", "half_cube")
            for d in (3, 5, 25)
        ]
    )


@pytest.mark.parametrize("name", list(BMI40_TASKS))
def test_task_samples_shape_dtype_finite_and_determinism(name):
    sampler = BMI40_TASKS[name]()
    assert (sampler.dim_x, sampler.dim_y) == DIMS[name]
    x, y = sampler.sample(64, torch.Generator().manual_seed(3))
    assert x.shape == (64, sampler.dim_x) and y.shape == (64, sampler.dim_y)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    x2, y2 = sampler.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = sampler.sample(64, torch.Generator().manual_seed(4))
    assert not torch.equal(x, x3)
    x64, y64 = sampler.sample(64, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert x64.dtype == torch.float64 and y64.dtype == torch.float64
    assert torch.equal(x64.float(), x) and torch.equal(y64.float(), y), "float64 inside, cast"


@pytest.mark.parametrize("name", COPULA)
def test_copula_tasks_keep_the_ranks_of_their_gaussian_base(name):
    """Monotone coordinate-wise maps: each column is ordered exactly as the base's (so the
    Spearman matrix is the base's)."""
    sampler = BMI40_TASKS[name]()
    assert isinstance(sampler, MappedSampler)
    x, y = sampler.sample(2_000, torch.Generator().manual_seed(8), dtype=torch.float64)
    bx, by = sampler.base.sample(2_000, torch.Generator().manual_seed(8), dtype=torch.float64)
    for out, base in ((x, bx), (y, by)):
        assert torch.equal(out.argsort(0), base.argsort(0))


# ----- wiggly and bimodal maps ----------------------------------------------------------------


@pytest.mark.parametrize("f", [wiggly_x, wiggly_y], ids=lambda f: f.name)
def test_wiggly_maps_are_strictly_increasing_with_an_inverse(f):
    grid = torch.linspace(-30, 30, 200_001, dtype=torch.float64)
    assert (torch.diff(f(grid)) > 0).all()
    t = 3.0 * torch.randn(10_000, 2, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(f.inverse(f(t)), t, atol=1e-10, rtol=0)
    torch.testing.assert_close(f(f.inverse(t)), t, atol=1e-10, rtol=0)
    assert f(t.float()).dtype == torch.float32 and f(t).shape == t.shape


def test_wiggly_values():
    t = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    fx = [
        v + 0.4 * math.sin(v) + 0.2 * math.sin(1.7 * v + 1) + 0.03 * math.sin(3.3 * v - 2.5)
        for v in t.tolist()
    ]
    gy = [
        v
        - 0.4 * math.sin(0.4 * v)
        + 0.17 * math.sin(1.3 * v + 3.5)
        + 0.02 * math.sin(4.3 * v - 2.5)
        for v in t.tolist()
    ]
    torch.testing.assert_close(wiggly_x(t), torch.tensor(fx, dtype=torch.float64))
    torch.testing.assert_close(wiggly_y(t), torch.tensor(gy, dtype=torch.float64))


def _mixture_cdf(x: float, weights, means) -> float:
    return sum(
        w * 0.5 * math.erfc(-(x - m) / math.sqrt(2.0)) for w, m in zip(weights, means, strict=True)
    )


BIMODAL = [(bimodal_x, (0.3, 0.7), (0.0, 5.0)), (bimodal_y, (0.5, 0.5), (-1.0, 3.0))]


@pytest.mark.parametrize("f,weights,means", BIMODAL, ids=["x", "y"])
def test_bimodal_maps_are_the_mixture_quantiles(f, weights, means):
    u = torch.linspace(1e-9, 1 - 1e-9, 100_001, dtype=torch.float64)
    q = f(u)
    assert (torch.diff(q) > 0).all(), "strictly increasing"
    torch.testing.assert_close(f.inverse(q), u, atol=1e-12, rtol=0)
    for v in (0.001, 0.3, 0.5, 0.9, 0.999999):  # independent CDF, math.erfc
        assert _mixture_cdf(f(torch.tensor([v], dtype=torch.float64)).item(), weights, means) == (
            pytest.approx(v, abs=1e-11)
        )
    # tails: u that rounds to 0 or 1 is clamped, values stay finite and ordered
    ends = f(torch.tensor([0.0, 1e-300, 1e-15, 1 - 1e-15, 1.0], dtype=torch.float64))
    assert torch.isfinite(ends).all() and (torch.diff(ends) >= 0).all()
    assert f(torch.tensor([0.0, 1.0])).dtype == torch.float32


@pytest.mark.parametrize("f,weights,means", BIMODAL, ids=["x", "y"])
def test_bimodal_marginals_match_the_mixture(f, weights, means):
    n = 20_000
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = f(normal_cdf(z))
    mean = sum(w * m for w, m in zip(weights, means, strict=True))
    var = 1.0 + sum(w * m**2 for w, m in zip(weights, means, strict=True)) - mean**2
    assert abs(s.mean().item() - mean) < 4 * math.sqrt(var / n)
    cut = 0.5 * (means[0] + means[1])
    p = _mixture_cdf(cut, weights, means)
    assert abs((s < cut).double().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_bimodal_task_is_normal_cdf_then_the_quantiles():
    sampler = BMI40_TASKS["1v1-bimodal-0.75"]()
    assert sampler.maps_x == (normal_cdf, bimodal_x)
    assert sampler.maps_y == (normal_cdf, bimodal_y)
    x, y = sampler.sample(1_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    bx, by = sampler.base.sample(1_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(normal_cdf.inverse(bimodal_x.inverse(x)), bx, atol=1e-8, rtol=0)
    torch.testing.assert_close(normal_cdf.inverse(bimodal_y.inverse(y)), by, atol=1e-8, rtol=0)


# ----- Swiss roll -----------------------------------------------------------------------------


def test_swissroll_values_and_recovery():
    u = torch.rand(5_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xy = swissroll(u)
    assert xy.shape == (5_000, 2)
    t = 1.5 * math.pi * (1 + 2 * u[:, 0])
    torch.testing.assert_close(xy, torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 21)
    torch.testing.assert_close(21 * xy.norm(dim=1), t)  # the norm is t / 21
    torch.testing.assert_close(swissroll.inverse(xy), u, atol=1e-12, rtol=0)
    assert swissroll(u.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        swissroll(torch.zeros(3, 2))


def test_swissroll_task_rolls_x_only():
    sampler = BMI40_TASKS["swissroll_x-normal_cdf-1v1-normal-0.75"]()
    x, y = sampler.sample(2_000, torch.Generator().manual_seed(5), dtype=torch.float64)
    bx, by = sampler.base.sample(2_000, torch.Generator().manual_seed(5), dtype=torch.float64)
    assert x.shape == (2_000, 2) and y.shape == (2_000, 1)
    torch.testing.assert_close(swissroll.inverse(x), normal_cdf(bx), atol=1e-12, rtol=0)
    torch.testing.assert_close(y, normal_cdf(by))
    assert (y > 0).all() and (y < 1).all()


# ----- spiral ---------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [3, 5, 25])
@pytest.mark.parametrize("cdf", [False, True])
def test_spiral_tasks(d, cdf):
    name = f"spiral-{'normal_cdf-' if cdf else ''}multinormal-sparse-{d}-{d}-2-2.0"
    sampler = BMI40_TASKS[name]()
    sx, sy = sampler.maps_x[-1], sampler.maps_y[-1]
    assert sx == Spiral(d, plane=(0, 1)) and sy == Spiral(d, plane=(1, 2))
    assert sx.angular_speed == pytest.approx(1 / d)
    assert sampler.maps_x[:-1] == ((normal_cdf,) if cdf else ())
    assert sampler.base == multinormal_sparse(d, d, 2, 2.0)
    x, y = sampler.sample(500, torch.Generator().manual_seed(6), dtype=torch.float64)
    bx, by = sampler.base.sample(500, torch.Generator().manual_seed(6), dtype=torch.float64)
    pre = normal_cdf if cdf else (lambda t: t)
    torch.testing.assert_close(sx.inverse(x), pre(bx), atol=1e-10, rtol=0)
    torch.testing.assert_close(sy.inverse(y), pre(by), atol=1e-10, rtol=0)


# ----- additive noise -------------------------------------------------------------------------


def test_additive_noise_mi_both_branches():
    assert AdditiveUniform(0.75).mutual_information() == pytest.approx(1 / 3, rel=1e-12)
    for eps in (0.05, 0.1, 0.3, 0.5):
        assert AdditiveUniform(eps).mutual_information() == pytest.approx(
            eps - math.log(2 * eps), rel=1e-12
        )
    below, above = AdditiveUniform(0.5).mutual_information(), AdditiveUniform(0.5 + 1e-9)
    assert above.mutual_information() == pytest.approx(below, abs=1e-8)
    for eps in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="epsilon"):
            AdditiveUniform(eps)


@pytest.mark.parametrize("eps", [0.3, 0.75, 2.0])
def test_additive_noise_against_monte_carlo(eps):
    sampler = AdditiveUniform(eps)
    x, y = sampler.sample(100_000, torch.Generator().manual_seed(4), dtype=torch.float64)
    assert x.shape == y.shape == (100_000, 1)
    pmi = sampler.log_density(x, y) - sampler.log_density_x(x) - sampler.log_density_y(y)
    assert torch.isfinite(pmi).all()
    se = pmi.std().item() / math.sqrt(len(pmi))
    assert abs(pmi.mean().item() - sampler.mutual_information()) < 4 * se
    neg_log = -sampler.log_density_y(y)
    se = neg_log.std().item() / math.sqrt(len(neg_log))
    assert abs(neg_log.mean().item() - sampler.entropy_y()) < 4 * se
    # the trapezoid density integrates to 1
    grid = torch.linspace(-eps, 1 + eps, 200_001, dtype=torch.float64)[:, None]
    dens = sampler.log_density_y(grid).exp()
    assert torch.trapezoid(dens, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_mapped_sampler_checks_dimensions():
    with pytest.raises(ValueError, match="dimension"):
        MappedSampler(multinormal_sparse(3, 3), (Spiral(4),), ())
    with pytest.raises(ValueError, match="dimension"):
        MappedSampler(multinormal_sparse(2, 2), (swissroll,), ())
    ok = MappedSampler(one_v_one_normal(0.5), (normal_cdf, swissroll), ())
    assert (ok.dim_x, ok.dim_y) == (2, 1)
