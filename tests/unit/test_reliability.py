"""Reliability flags: each check fires on the failure it names and stays silent on honest
estimates, and the warnings travel with a PairEstimate from evaluation to JSON and back."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mist_core.estimators import BatchTerms
from mist_core.reliability import (
    above_bound,
    discrete_entropy,
    few_samples_dominate,
    infonce_bound_warning,
    negative_estimate,
    reliability_warnings,
    still_rising,
)
from mist_core.results import PairEstimate
from mist_core.training import estimate_mi, evaluate_pairs
from mist_core.training.parts import LOG_COLUMNS


def _gaussian_pointwise_mi(n: int, rho: float, seed: int) -> torch.Tensor:
    """``[n]`` true log p(x,y) - log p(x) - log p(y) of a standard bivariate normal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, generator=g, dtype=torch.float64)
    quadratic = (x * x - 2 * rho * x * y + y * y) / (2 * (1 - rho**2))
    return -0.5 * math.log(1 - rho**2) - quadratic + (x * x + y * y) / 2


def _cauchy_pointwise_mi(n: int, seed: int) -> torch.Tensor:
    """``[n]`` true pointwise MI of a 1-d Student-t pair, 1 degree of freedom, identity
    dispersion: p(x,y) = (1 + x^2 + y^2)^(-3/2) / 2 pi, Cauchy marginals 1 / pi (1 + x^2)."""
    rng = np.random.default_rng(seed)
    xy = rng.standard_normal((n, 2)) / np.sqrt(rng.chisquare(1.0, n))[:, None]
    x2, y2 = torch.from_numpy(xy**2).unbind(1)
    return math.log(math.pi / 2) + x2.log1p() + y2.log1p() - 1.5 * (x2 + y2).log1p()


# --- few_samples_dominate -------------------------------------------------------------


def test_a_js_like_blow_up_on_one_sample_is_flagged_with_its_size():
    g = torch.Generator().manual_seed(0)
    terms = 0.3 + 0.5 * torch.randn(5000, generator=g, dtype=torch.float64)
    terms[1234] = -3.8e7  # the critic exploded on one sample: the mean is -7,600 nats
    text = few_samples_dominate(terms)
    assert text is not None
    assert "5,000" in text and "-7,600 nats" in text and "DoE" in text
    assert "without them it is 0.29" in text


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rho", [0.9, 0.999])
def test_few_samples_is_silent_on_gaussian_log_ratios(rho, seed):
    # Skewed (a long left tail) but legitimate: the trimming shift is < 0.005 nats.
    assert few_samples_dominate(_gaussian_pointwise_mi(5000, rho, seed)) is None


@pytest.mark.parametrize("seed", range(5))
def test_few_samples_is_silent_on_heavy_but_correct_student_t_terms(seed):
    # Cauchy pairs: terms out to +-10 nats; trimming moves the mean by ~0.01 nats only.
    terms = _cauchy_pointwise_mi(5000, seed)
    assert float(terms.mean()) == pytest.approx(0.22, abs=0.05)
    assert few_samples_dominate(terms) is None


def test_few_samples_floor_and_small_samples():
    g = torch.Generator().manual_seed(1)
    terms = 0.3 + 0.5 * torch.randn(5000, generator=g, dtype=torch.float64)
    one = terms.clone()
    one[0] = -100.0  # moves the mean by 0.02 nats: below the 0.05 floor
    assert few_samples_dominate(one) is None
    five = terms.clone()
    five[:5] = -200.0  # 0.2 nats carried by 5 samples of 5,000
    assert "by -0.199 nats" in few_samples_dominate(five)
    assert few_samples_dominate(torch.tensor([0.1] * 48 + [-1e6])) is None  # < 50: no say


def test_non_finite_terms_are_flagged():
    terms = torch.zeros(100)
    terms[3] = float("nan")
    terms[7] = float("-inf")
    assert "2 of 100 per-sample terms are NaN or infinite" in few_samples_dominate(terms)


# --- bounds and signs ------------------------------------------------------------------


def test_negative_estimate():
    text = negative_estimate(-0.5, 0.05)
    assert text is not None and "-0.5 nats" in text and "10 standard errors" in text
    assert "worse than independence" in text and "train longer" in text
    assert negative_estimate(-0.1, 0.05) is None  # 2 standard errors: noise
    assert negative_estimate(-0.01, 0.001) is None  # 10 standard errors, but tiny
    assert negative_estimate(0.3, 0.01) is None
    assert negative_estimate(float("nan"), 0.01) is None


def test_above_bound():
    text = above_bound(0.95, 0.01, math.log(2), "log(batch)")
    assert text is not None and text.startswith("0.95 nats is above log(batch) = 0.693 nats")
    assert "check it" in text
    assert above_bound(0.75, 0.05, math.log(2), "log(batch)") is None  # within 2 se
    assert above_bound(0.70, 0.001, math.log(2), "log(batch)") is None  # by < 0.02 nats
    assert "do this" in above_bound(2.0, 0.01, 1.0, "H(Y)", advice="do this")


def test_infonce_bound_warning():
    text = infonce_bound_warning(4.8, 128)
    assert text is not None and "log(128) = 4.85 nats" in text
    assert "may be larger" in text and "DoE or a larger batch" in text
    assert infonce_bound_warning(4.9, 128) is not None  # above the cap too
    assert infonce_bound_warning(4.7, 128) is None
    with pytest.raises(ValueError, match="batch_size"):
        infonce_bound_warning(1.0, 0)


def test_discrete_entropy():
    g = torch.Generator().manual_seed(0)
    four = torch.randint(0, 4, (4000, 1), generator=g).float()
    assert discrete_entropy(four) == pytest.approx(math.log(4), abs=0.01)
    assert discrete_entropy(four.squeeze(1)) == pytest.approx(math.log(4), abs=0.01)
    pairs = torch.randint(0, 2, (4000, 2), generator=g)  # rows are the values: 4 of them
    assert discrete_entropy(pairs) == pytest.approx(math.log(4), abs=0.01)
    assert discrete_entropy(torch.randn(4000, 1, generator=g)) is None
    assert discrete_entropy(torch.randint(0, 65, (4000, 1), generator=g)) is None  # > 64
    assert discrete_entropy(torch.randint(0, 10, (40, 1), generator=g)) is None  # >= n / 5
    assert discrete_entropy(torch.zeros(100, 1)) == 0.0


# --- still rising ------------------------------------------------------------------------


def _log(curves: dict[str, list[float]], *, budget: int = 2000, **attrs) -> pd.DataFrame:
    """A training log with validation rows every budget/len steps for each named curve."""
    rows = []
    for name, values in curves.items():
        every = budget // len(values)
        rows += [((i + 1) * every, 0, "valid", name, v) for i, v in enumerate(values)]
        rows += [((i + 1) * every, 0, "valid", "loss", -v) for i, v in enumerate(values)]
    log = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    log.attrs.update(
        dict(stopped=False, early_stopped=False, best_step=budget, steps=budget, epochs=3) | attrs
    )
    return log


def _curve(scale: float, seed: int, points: int = 10, noise: float = 0.02) -> list[float]:
    """1 - exp(-s / scale) at s = 0.1 ... 1 of the budget, plus noise."""
    rng = np.random.default_rng(seed)
    s = np.arange(1, points + 1) / points
    return list(1 - np.exp(-s / scale) + noise * rng.standard_normal(points))


def test_still_rising_fires_at_the_budget():
    text = still_rising(_log({"I(x;y)": _curve(0.5, 0)}), max_iterations=2000)
    assert text is not None and "still rising" in text
    assert "budget of 2000 steps: raise max_iterations" in text
    by_epochs = still_rising(_log({"I(x;y)": _curve(0.5, 0)}), max_iterations=None)
    assert "raise max_epochs" in by_epochs and "2000 steps, 3 epochs" in by_epochs
    # Clearly rising curves are caught (in 20 of 20 draws here).
    assert all(
        still_rising(_log({"I(x;y)": _curve(0.5, seed)}), max_iterations=2000)
        for seed in range(20)
    )


def test_still_rising_is_silent_when_flat_early_stopped_or_too_short():
    flat = [
        still_rising(_log({"I(x;y)": _curve(0.01, seed)}), max_iterations=2000)
        for seed in range(20)
    ]
    assert sum(text is not None for text in flat) <= 1  # about 1-2% by chance
    rising = {"I(x;y)": _curve(0.5, 0)}
    assert still_rising(_log(rising, early_stopped=True), max_iterations=2000) is None
    assert still_rising(_log(rising, stopped=True), max_iterations=2000) is None
    short = {"I(x;y)": _curve(0.5, 0, points=5)}
    assert still_rising(_log(short), max_iterations=2000) is None
    assert still_rising(_log({"I(x;y)": [0.5] * 10}), max_iterations=2000) is None
    assert still_rising(pd.DataFrame(columns=list(LOG_COLUMNS)), max_iterations=10) is None


def test_still_rising_names_the_rising_pairs_of_many():
    log = _log({"I(a;nose)": _curve(0.5, 0), "I(b;nose)": _curve(0.01, 3)})
    text = still_rising(log, max_iterations=2000)
    assert text is not None and "(I(a;nose))" in text and "I(b;nose)" not in text


# --- all together ------------------------------------------------------------------------


def test_reliability_warnings_order_and_applicability():
    blown = torch.zeros(1000)
    blown[0] = -1e5  # mean -100: a few samples carry it, and it is negative
    found = reliability_warnings(blown, estimator="js", mi=-100.0, std_error=3.0)
    assert len(found) == 2
    assert "per-sample terms" in found[0] and "below zero" in found[1]
    # InfoNCE's cap only for InfoNCE, and only with the batch size.
    assert (
        reliability_warnings(None, estimator="doe", mi=4.8, std_error=0.01, batch_size=128) == ()
    )
    assert reliability_warnings(None, estimator="infonce", mi=4.8, std_error=0.01) == ()
    (cap,) = reliability_warnings(
        None, estimator="infonce", mi=4.8, std_error=0.01, batch_size=128
    )
    assert "log(128)" in cap
    # A discrete target bounds the estimate by its entropy (2 values: log 2 = 0.693, plus
    # 0.0005 of Miller-Madow).
    y = torch.arange(1000).remainder(2).float().unsqueeze(1)
    (bound,) = reliability_warnings(None, estimator="doe", mi=3.0, std_error=0.05, y=y)
    assert "H(Y) = 0.694" in bound and "dequantize" in bound
    assert reliability_warnings(None, estimator="doe", mi=0.6, std_error=0.05, y=y) == ()
    # A training log that was still rising.
    log = _log({"I(x;y)": _curve(0.5, 0)})
    (rising,) = reliability_warnings(
        None, estimator="doe", mi=0.8, std_error=0.01, log=log, max_iterations=2000
    )
    assert "still rising" in rising


# --- evaluation and the stored form -------------------------------------------------------


class _Terms(nn.Module):
    """A stand-in estimator whose per-sample terms are the batch's x."""

    def batch_terms(self, batch: dict[str, torch.Tensor]) -> BatchTerms:
        terms = batch["x"][:, 0]
        return BatchTerms(-terms.mean(), {"I(x;y)": terms})


def test_evaluation_attaches_the_warnings():
    g = torch.Generator().manual_seed(0)
    terms = 0.3 + 0.5 * torch.randn(2000, 1, generator=g)
    terms[5] = -3.8e7
    data = (terms, torch.zeros(2000, 1))
    (estimate,) = evaluate_pairs(_Terms(), data, batch_size=256, device="cpu")
    # One sample makes the standard error 19,000 nats too: only the trimming sees it.
    assert estimate.mi < -1e4 and len(estimate.warnings) == 1
    assert "per-sample terms" in estimate.warnings[0]
    below = (-0.5 + 0.1 * torch.randn(600, 1, generator=g), torch.zeros(600, 1))
    (negative,) = evaluate_pairs(_Terms(), below, batch_size=256, device="cpu")
    assert len(negative.warnings) == 1 and "below zero" in negative.warnings[0]
    (unchecked,) = evaluate_pairs(_Terms(), data, batch_size=256, device="cpu", checks=False)
    assert unchecked.warnings == () and unchecked.mi == estimate.mi
    # InfoNCE at log(evaluation batch): log 256 = 5.55 nats.
    capped = (torch.full((600, 1), 5.5), torch.zeros(600, 1))
    (infonce,) = evaluate_pairs(
        _Terms(), capped, batch_size=256, device="cpu", estimator_name="infonce"
    )
    assert len(infonce.warnings) == 1 and "log(256)" in infonce.warnings[0]
    (doe,) = evaluate_pairs(_Terms(), capped, batch_size=256, device="cpu", estimator_name="doe")
    assert doe.warnings == ()


def test_an_honest_gaussian_estimate_carries_no_warning():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 1, generator=g)
    y = 0.9 * x + math.sqrt(1 - 0.81) * torch.randn(10_000, 1, generator=g)
    result = estimate_mi(x, y, "gaussian", device="cpu")
    (estimate,) = evaluate_pairs(result.model, (x, y), device="cpu", estimator_name="gaussian")
    assert estimate.mi == pytest.approx(-0.5 * math.log(1 - 0.81), abs=0.03)
    assert estimate.warnings == ()


def test_pair_estimate_warnings_round_trip_and_old_rows_read():
    flagged = PairEstimate("trained", "nose", -0.5, 0.05, 512, "js", ("first", "second"))
    row = json.loads(json.dumps(flagged.to_dict()))
    assert row["warnings"] == ["first", "second"]
    assert PairEstimate.from_dict(row) == flagged
    old = {"encoder": "e", "landmark": "nose", "mi": 1.0, "std_error": 0.1, "n": 10}
    assert PairEstimate.from_dict(old).warnings == ()
    assert PairEstimate.from_dict({**old, "warnings": None}).warnings == ()
    assert PairEstimate.from_dict({**old, "warnings": "by hand"}).warnings == ("by hand",)
