"""Tier 0 of the accuracy suite: invariants every estimator must keep (under a minute).

- InfoNCE never exceeds log(batch), trained or not;
- plug-in: the true densities fed through the DoE, BA and CLUB code paths give the MI
  (CLUB: what it measures, d (e^{2I/d} - 1)), which pins signs, log-determinants and units;
- independence gives about zero (every estimator: ``test_estimators.py``);
- I(X; Y^3) = I(X; Y); two independent copies add up; the same seed gives the same estimate.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from bench.accuracy.samplers import BMI_TASKS, CorrelatedGaussian, StudentT, cube
from bench.accuracy.staircase import club_target
from mist_core import estimate_mi
from mist_core.estimators import BA, CLUB, DoE, InfoNCE, SeparableCritic, bounds


class _Normal:
    """A distribution-like object: ``log_prob(y)`` of ``N(loc, scale^2 I)`` over the last axis."""

    def __init__(self, loc: Tensor, scale: float) -> None:
        self.loc, self.scale = loc, scale

    def log_prob(self, y: Tensor) -> Tensor:
        z = (y - self.loc) / self.scale
        d = y.shape[-1]
        return -0.5 * (z**2).sum(-1) - d * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))


class _TrueConditional(nn.Module):
    """``p(y | x)`` of a :class:`CorrelatedGaussian`, with ``.condition(x).log_prob(y)``."""

    def __init__(self, sampler: CorrelatedGaussian) -> None:
        super().__init__()
        self.rho = sampler.rho

    def condition(self, x: Tensor) -> _Normal:
        return _Normal(self.rho * x, math.sqrt(1.0 - self.rho**2))


class _TrueMarginal(nn.Module):
    def log_prob(self, y: Tensor) -> Tensor:
        return _Normal(torch.zeros(()), 1.0).log_prob(y)


class _Pointwise:
    """``log p(y | x)`` from a sampler's joint and marginal densities (aligned rows only)."""

    def __init__(self, sampler, x: Tensor) -> None:  # noqa: ANN001
        self.sampler, self.x = sampler, x

    def log_prob(self, y: Tensor) -> Tensor:
        return self.sampler.log_density(self.x, y) - self.sampler.log_density_x(self.x)


class _SamplerConditional(nn.Module):
    def __init__(self, sampler) -> None:  # noqa: ANN001
        super().__init__()
        self.sampler = sampler

    def condition(self, x: Tensor) -> _Pointwise:
        return _Pointwise(self.sampler, x)


class _SamplerMarginal(nn.Module):
    def __init__(self, sampler) -> None:  # noqa: ANN001
        super().__init__()
        self.sampler = sampler

    def log_prob(self, y: Tensor) -> Tensor:
        return self.sampler.log_density_y(y)


def _mean_and_error(values: Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


# -- InfoNCE ----------------------------------------------------------------------------------


def test_infonce_never_exceeds_log_batch_on_any_scores():
    generator = torch.Generator().manual_seed(0)
    for n in (2, 3, 17, 64):
        for scale in (0.1, 10.0, 1e4):
            scores = torch.randn(n, n, generator=generator) * scale
            assert bounds.infonce_terms(scores).mean() <= math.log(n) + 1e-5
        perfect = torch.full((n, n), -1e4).fill_diagonal_(1e4)
        assert bounds.infonce_terms(perfect).mean() == pytest.approx(math.log(n), abs=1e-5)


def test_trained_infonce_stays_under_log_batch_at_high_mi():
    """10 nats of truth, batches of 16: the estimate saturates near log 16 = 2.77, not above."""
    sampler = CorrelatedGaussian.with_mi(5, 10.0)
    x, y = sampler.sample(4000, torch.Generator().manual_seed(0))
    result = estimate_mi(
        x, y, "infonce", max_iterations=300, batch_size=16, device="cpu", seed=0,
        estimator_options={"critic": "separable", "hidden_dims": [64]},
    )  # fmt: skip
    assert result.mi <= math.log(16) + 1e-6
    assert result.mi > 0.7 * math.log(16)  # it did learn: far above zero, near the cap


# -- plug-in: true densities through the estimators' code paths ------------------------------


@pytest.mark.parametrize("mi", [0.5, 4.0])
def test_true_densities_make_doe_and_ba_exact_and_club_its_target(mi):
    dim = 4
    sampler = CorrelatedGaussian.with_mi(dim, mi)
    x, y = sampler.sample(40_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    conditional = _TrueConditional(sampler)

    doe = DoE(q_Y_given_X=conditional, q_Y=_TrueMarginal())
    mean, error = _mean_and_error(doe.log_ratio(x, y))
    assert abs(mean - mi) < 3 * error + 1e-9, (mean, error)

    ba = BA(q_Y_given_X=conditional, entropy_y=sampler.entropy_y())
    mean, error = _mean_and_error(ba.log_ratio(x, y))
    assert abs(mean - mi) < 3 * error + 1e-9, (mean, error)

    club = CLUB(q_Y_given_X=conditional)
    batch_means = torch.stack([club.log_ratio(xb, yb).mean() for xb, yb in
                               zip(x.split(200), y.split(200), strict=True)])  # fmt: skip
    mean, error = _mean_and_error(batch_means)
    target = club_target(mi, dim)
    assert target > mi
    assert abs(mean - target) < 3 * error, (mean, error, target)


@pytest.mark.parametrize("task", ["multinormal-sparse-5-5", "multinormal-dense-5-5", "student"])
def test_true_densities_through_doe_on_other_families(task):
    """DoE's path with the exact log-densities of the BMI families gives their closed form."""
    sampler = StudentT(3, 2, dof=3.0) if task == "student" else BMI_TASKS[task]()
    x, y = sampler.sample(40_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    doe = DoE(q_Y_given_X=_SamplerConditional(sampler), q_Y=_SamplerMarginal(sampler))
    mean, error = _mean_and_error(doe.log_ratio(x, y))
    assert abs(mean - sampler.mutual_information()) < 3 * error, (mean, error)


def test_a_wrong_sign_or_scale_would_be_caught():
    """The plug-in checks have teeth: swapping the densities or dropping a log-determinant
    (a density in the wrong units) moves the estimate by many standard errors."""
    sampler = CorrelatedGaussian.with_mi(4, 2.0)
    x, y = sampler.sample(20_000, torch.Generator().manual_seed(3), dtype=torch.float64)
    swapped = DoE(q_Y_given_X=_SwappedConditional(sampler), q_Y=_TrueMarginal())
    mean, error = _mean_and_error(swapped.log_ratio(x, y))
    assert abs(mean - 2.0) > 10 * error
    unscaled = DoE(q_Y_given_X=_TrueConditional(sampler), q_Y=_TrueMarginal())
    mean, error = _mean_and_error(unscaled.log_ratio(x, 2.0 * y) + 4 * math.log(2.0))
    assert abs(mean - 2.0) > 10 * error


class _SwappedConditional(_TrueConditional):
    def condition(self, x: Tensor) -> _Normal:
        return _Normal(torch.zeros(()), 1.0)  # q(y|x) := q(y): a DoE of exactly zero


# -- invariances of trained estimators -------------------------------------------------------


def _doe(x: Tensor, y: Tensor, seed: int = 0, standardize: bool | str = "gaussianize") -> float:
    return estimate_mi(
        x, y, "doe", max_iterations=400, batch_size=128, device="cpu", seed=seed,
        standardize=standardize, estimator_options={"hidden_dims": [32, 32]},
    ).mi  # fmt: skip


def test_cubing_y_does_not_change_the_estimate():
    """I(X; Y^3) = I(X; Y): with Gaussianised marginals the estimator sees the same ranks."""
    sampler = CorrelatedGaussian.with_mi(2, 1.0)
    x, y = sampler.sample(6000, torch.Generator().manual_seed(4))
    plain, cubed = _doe(x, y), _doe(x, cube(y))
    assert plain == pytest.approx(1.0, abs=0.1)
    assert cubed == pytest.approx(plain, abs=0.05)


def test_two_independent_copies_add_up():
    generator = torch.Generator().manual_seed(5)
    x1, y1 = CorrelatedGaussian.with_mi(1, 0.5).sample(6000, generator)
    x2, y2 = CorrelatedGaussian.with_mi(1, 1.0).sample(6000, generator)
    first, second = _doe(x1, y1), _doe(x2, y2)
    both = _doe(torch.cat([x1, x2], 1), torch.cat([y1, y2], 1))
    assert first == pytest.approx(0.5, abs=0.1) and second == pytest.approx(1.0, abs=0.1)
    assert both == pytest.approx(first + second, abs=0.12)


def test_same_seed_same_estimate():
    x, y = CorrelatedGaussian.with_mi(2, 1.0).sample(2000, torch.Generator().manual_seed(6))
    once, again = _doe(x, y, seed=3), _doe(x, y, seed=3)
    assert once == again
    assert _doe(x, y, seed=4) != once


def test_separable_infonce_code_path_matches_its_formula():
    """The estimator class wires the critic's [N, N] scores to the bound without a slip."""
    torch.manual_seed(0)
    critic = SeparableCritic(3, 2, [8], embedding_dim=4)
    estimator = InfoNCE(critic)
    x, y = torch.randn(7, 3), torch.randn(7, 2)
    expected = bounds.infonce_terms(critic(x, y))
    torch.testing.assert_close(estimator.log_ratio(x, y), expected)
