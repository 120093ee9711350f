"""Every estimator against the truth on correlated Gaussians, plus the mechanics behind them."""

from __future__ import annotations

import math

import pytest
import torch

from bench.accuracy.samplers import CorrelatedGaussian
from mist_core import ESTIMATORS, build_estimator, estimate_mi
from mist_core.estimators import bounds
from mist_core.estimators.critics import JointCritic, SeparableCritic

LOWER_BOUNDS = {"ba", "nwj", "mine", "infonce", "js"}
UPPER_BOUNDS = {"club", "l1out"}
DISCRIMINATIVE = {"nwj", "mine", "infonce", "js", "smile"}
#: Estimators with networks to train (the Gaussian one is fitted in closed form).
TRAINED = sorted(name for name in ESTIMATORS if name != "gaussian")


def _options(name: str, sampler: CorrelatedGaussian) -> dict:
    if name == "ba":
        return {"entropy_y": sampler.entropy_y()}
    if name in DISCRIMINATIVE:
        return {"hidden_dims": [64, 64]}
    return {}


def _estimate(name: str, sampler: CorrelatedGaussian, seed: int = 0):
    x, y = sampler.sample(6000, torch.Generator().manual_seed(seed))
    return estimate_mi(
        x,
        y,
        name,
        max_iterations=300,
        batch_size=64,
        device="cpu",
        seed=seed,
        estimator_options=_options(name, sampler),
    )


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_recovers_gaussian_mi(name):
    """2-d x, 2-d y, I = 1 nat, 300 steps of batch 64, 3,000 held-out samples.

    Tolerances: at this budget every estimator measured within 0.08 nats of the truth over
    seeds 0-2 (standard errors ~0.02), so 0.15 leaves room for noise but not for a wrong
    sign, a missing log-determinant or a wrong axis (each of which costs >= 0.3 nats).
    CLUB estimates a different quantity: for Gaussians with an exact q it equals
    d (e^{2I/d} - 1) = 3.44 nats; within 15% at this budget.
    """
    sampler = CorrelatedGaussian.with_mi(2, 1.0)
    truth = sampler.mutual_information()
    result = _estimate(name, sampler)
    assert math.isfinite(result.mi) and result.std_error > 0
    if name == "club":
        club_truth = 2 * (math.exp(2 * truth / 2) - 1)
        assert result.mi == pytest.approx(club_truth, rel=0.15)
        assert result.mi >= truth
    else:
        assert result.mi == pytest.approx(truth, abs=0.15)
    if name in LOWER_BOUNDS:
        assert result.mi <= truth + 3 * result.std_error
    if name in UPPER_BOUNDS:
        assert result.mi >= truth - 3 * result.std_error


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_independent_variables_give_about_zero(name):
    result = _estimate(name, CorrelatedGaussian(2, 0.0), seed=1)
    assert abs(result.mi) < 0.05


def test_doe_is_accurate_on_raw_pixel_units():
    """Landmark-like data: coordinates near 100 with a spread of 5, no standardisation."""
    sampler = CorrelatedGaussian.with_mi(2, 1.5)
    x, y = sampler.sample(8000, torch.Generator().manual_seed(3))
    raw = estimate_mi(
        x * 5 + 100,
        y * 5 + 130,
        "doe",
        max_iterations=400,
        device="cpu",
        standardize=False,
        seed=3,
    )
    assert raw.mi == pytest.approx(1.5, abs=0.1)


def test_l1out_mixes_over_the_other_xs():
    """Brute force on a small batch with D_x != D_y: the mixture for y_i runs over x_j, j != i."""
    torch.manual_seed(0)
    est = build_estimator("l1out", 3, 2, hidden_dims=[8]).eval()
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    q = est.q_Y_given_X
    expected = []
    for i in range(6):
        positive = q.condition(x[i]).log_prob(y[i])
        others = torch.stack([q.condition(x[j]).log_prob(y[i]) for j in range(6) if j != i])
        expected.append(positive - (torch.logsumexp(others, 0) - math.log(5)))
    torch.testing.assert_close(est.log_ratio(x, y), torch.stack(expected), rtol=1e-4, atol=1e-4)


def test_club_contrasts_each_x_with_every_other_y():
    torch.manual_seed(0)
    est = build_estimator("club", 3, 2, hidden_dims=[8]).eval()
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    q = est.q_Y_given_X
    others = [[j for j in range(5) if j != i] for i in range(5)]
    expected = torch.stack(
        [
            q.condition(x[i]).log_prob(y[i]) - q.condition(x[i]).log_prob(y[others[i]]).mean()
            for i in range(5)
        ]
    )
    torch.testing.assert_close(est.log_ratio(x, y), expected, rtol=1e-4, atol=1e-4)


def test_bounds_match_their_formulas():
    torch.manual_seed(0)
    n = 5
    s = torch.randn(n, n) * 2
    off = [(i, j) for i in range(n) for j in range(n) if i != j]
    neg_mean_exp = sum(math.exp(s[i, j]) for i, j in off) / len(off)
    diag = s.diagonal()
    nwj = diag.mean() - sum(math.exp(s[i, j] - 1) for i, j in off) / len(off)
    torch.testing.assert_close(bounds.nwj_terms(s).mean(), nwj)
    torch.testing.assert_close(bounds.dv_terms(s).mean(), diag.mean() - math.log(neg_mean_exp))
    infonce = (
        sum(s[i, i] - math.log(sum(math.exp(s[i, j]) for j in range(n)) / n) for i in range(n)) / n
    )
    torch.testing.assert_close(bounds.infonce_terms(s).mean(), torch.tensor(float(infonce)))
    clipped = sum(math.exp(min(max(s[i, j].item(), -1.0), 1.0)) for i, j in off) / len(off)
    torch.testing.assert_close(
        bounds.smile_terms(s, tau=1.0).mean(), diag.mean() - math.log(clipped)
    )
    js = sum(math.log1p(math.exp(-s[i, i])) for i in range(n)) / n + sum(
        math.log1p(math.exp(s[i, j])) for i, j in off
    ) / len(off)
    torch.testing.assert_close(bounds.js_loss(s), torch.tensor(float(js)))


def test_infonce_never_exceeds_log_batch_but_the_others_can():
    """A perfectly separating critic: InfoNCE saturates at log N; the positive pair is not
    counted among the negatives of NWJ, DV or SMILE, so they are not capped there."""
    n = 16
    scores = torch.full((n, n), -10.0)
    scores.fill_diagonal_(10.0)
    assert bounds.infonce_terms(scores).mean() <= math.log(n) + 1e-6
    for terms in (bounds.dv_terms(scores), bounds.smile_terms(scores, tau=None)):
        assert terms.mean() > math.log(n) + 5
    for _ in range(20):
        assert bounds.infonce_terms(torch.randn(n, n) * 30).mean() <= math.log(n) + 1e-5


@pytest.mark.parametrize("critic_cls", [JointCritic, SeparableCritic])
def test_critic_score_matrix_matches_pointwise(critic_cls):
    torch.manual_seed(0)
    critic = critic_cls(3, 2, [8, 8])
    x, y = torch.randn(4, 3), torch.randn(5, 2)
    scores = critic(x, y)
    assert scores.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            torch.testing.assert_close(scores[i, j], critic.pointwise(x[i], y[j]))


def test_joint_critic_is_an_mlp_on_the_concatenation():
    torch.manual_seed(0)
    critic = JointCritic(3, 2, [8, 4])
    x, y = torch.randn(1, 3), torch.randn(1, 2)
    w = torch.cat([critic.x_in.weight, critic.y_in.weight], dim=1)
    hidden = torch.cat([x, y], 1) @ w.T + critic.x_in.bias
    expected = critic.head(hidden)
    torch.testing.assert_close(critic(x, y), expected.view(1, 1))


@pytest.mark.parametrize("name", TRAINED)
def test_flags_and_infomax_gradient(name):
    est = build_estimator(name, 3, 2, **({"entropy_y": 1.0} if name == "ba" else {}))
    assert est.lower_bound == (name in LOWER_BOUNDS)
    assert est.upper_bound == (name in UPPER_BOUNDS)
    expected_y = name in DISCRIMINATIVE
    assert est.infomax_gradient == {"x": True, "y": expected_y}
    # infomax_gradient is per instance: changing one does not change another
    other = build_estimator(name, 3, 2, **({"entropy_y": 1.0} if name == "ba" else {}))
    est.infomax_gradient["x"] = False
    assert other.infomax_gradient["x"] is True


@pytest.mark.parametrize("name", TRAINED)
def test_gradient_reaches_x_through_the_loss(name):
    est = build_estimator(
        name, 3, 2, hidden_dims=[8, 8], **({"entropy_y": 1.0} if name == "ba" else {})
    )
    x, y = torch.randn(8, 3, requires_grad=True), torch.randn(8, 2)
    # Flows start at the identity (no dependence on x yet): take one step first.
    est.loss(x, y).backward()
    torch.optim.SGD(est.parameters(), lr=0.1).step()
    x.grad = None
    est.loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TRAINED)
def test_state_dict_reloads_with_equal_outputs(name):
    options = {"hidden_dims": [8, 8], **({"entropy_y": 1.0} if name == "ba" else {})}
    torch.manual_seed(0)
    est = build_estimator(name, 3, 2, **options)
    x, y = torch.randn(16, 3) * 4 + 50, torch.randn(16, 2) * 3 - 20
    est.train()
    opt = torch.optim.Adam(est.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        est.loss(x, y).backward()
        opt.step()
    est.eval()
    torch.manual_seed(1)
    fresh = build_estimator(name, 3, 2, **options)
    fresh.load_state_dict(est.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh.log_ratio(x, y), est.log_ratio(x, y))


def test_gaussian_estimator_is_fitted_in_closed_form_and_reloads():
    sampler = CorrelatedGaussian.with_mi(3, 1.0)
    x, y = sampler.sample(4000, torch.Generator().manual_seed(0))
    est = build_estimator("gaussian", 3, 3)
    assert not est.lower_bound and not est.upper_bound
    assert list(est.parameters()) == []
    with pytest.raises(RuntimeError, match="fit"):
        est.log_ratio(x, y)
    est.fit(x[:2000], y[:2000])
    held_out = est.mutual_information(x[2000:], y[2000:])
    assert float(held_out) == pytest.approx(1.0, abs=0.06)
    fresh = build_estimator("gaussian", 3, 3)
    fresh.load_state_dict(est.state_dict())
    torch.testing.assert_close(fresh.log_ratio(x, y), est.log_ratio(x, y))
    # independent data: about zero on held-out samples
    noise = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1))
    est.fit(x[:2000], noise[:2000])
    assert abs(float(est.mutual_information(x[2000:], noise[2000:]))) < 0.02


def test_mine_moving_average_updates_in_training_only():
    est = build_estimator("mine", 2, 2, hidden_dims=[8])
    x, y = torch.randn(8, 2), torch.randn(8, 2)
    est.train()
    est.loss(x, y)
    first = est.log_ema.clone()
    assert torch.isfinite(first)
    est.loss(x * 3, y)
    assert not torch.equal(first, est.log_ema)
    est.eval()
    frozen = est.log_ema.clone()
    est.loss(x * 5, y)
    assert torch.equal(frozen, est.log_ema)


def test_bad_estimator_names_and_options_say_what_is_valid():
    with pytest.raises(ValueError, match="valid names: doe, ba"):
        build_estimator("dOe", 2, 2)
    with pytest.raises(ValueError, match="unknown argument.*'hiden_dims'.*hidden_dims"):
        build_estimator("doe", 2, 2, hiden_dims=[4])
    with pytest.raises(ValueError, match="valid critics: joint, separable"):
        build_estimator("nwj", 2, 2, critic="bilinear")
    with pytest.raises(ValueError, match="tau"):
        build_estimator("smile", 2, 2, tau=-1.0)
    with pytest.raises(TypeError, match="entropy_y"):
        build_estimator("ba", 2, 2)
    with pytest.raises(ValueError, match="at least 2 samples"):
        build_estimator("infonce", 2, 2).loss(torch.randn(1, 2), torch.randn(1, 2))


def test_parse_mi_name_inverts_mi_name():
    from mist_core.estimators import mi_name, parse_mi_name

    assert parse_mi_name(mi_name("trained", "left_eye")) == ("trained", "left_eye")
    with pytest.raises(ValueError, match="I\\(x;y\\)"):
        parse_mi_name("loss")
