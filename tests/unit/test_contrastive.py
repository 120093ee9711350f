"""The contrastive lower bound read from a fitted q(y|x) (``mist_core.training.contrastive``)
and how ``estimate_mi``'s ``"auto"`` uses it: the terms against a brute-force reading of
their definition; a q(y|x) that ignores x gives exactly zero; never above log K; with the
true conditional it is close to the true MI; the bound replaces the DoE only when it is
higher by the margin."""

from __future__ import annotations

import math

import pytest
import torch

from mist_core._rng import seeded_permutation
from mist_core.training.auto import _COPULA_FITS, AutoConfig, _cross_fit, _explain_bound, _read_out
from mist_core.training.candidates import copula_densities
from mist_core.training.contrastive import contrastive_terms

RHO = 0.75
TRUE_MI = -0.5 * math.log(1 - RHO**2)


def _gaussian_pairs(n: int, rho: float = RHO, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x, y: [n, 1]``, standard normal with correlation ``rho``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def _true_conditional(rho: float):
    """log p(y|x) of the pairs above, row by row ``-> [m]``."""
    scale = math.sqrt(1 - rho**2)
    normal = torch.distributions.Normal(0.0, scale)

    def log_prob(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return normal.log_prob(y[:, 0] - rho * x[:, 0])

    return log_prob


def test_terms_follow_their_definition_sample_by_sample():
    """n = 7, K = 4: each sample's set is its own x and the three that follow it in the
    seeded cyclic order, read back here and summed directly."""
    x, y = _gaussian_pairs(7)
    log_q = _true_conditional(RHO)
    terms = contrastive_terms(log_q, x, y, contrasts=4, seed=3)
    order = seeded_permutation(7, 3).tolist()
    used = [0] * 7
    for i in range(7):
        p = order.index(i)
        members = [order[(p + j) % 7] for j in range(4)]
        for k in members[1:]:
            used[k] += 1
        scores = torch.stack([log_q(x[k : k + 1], y[i : i + 1])[0] for k in members])
        expected = log_q(x[i : i + 1], y[i : i + 1])[0] - (scores.logsumexp(0) - math.log(4))
        assert members[0] == i and len(set(members)) == 4
        assert float(terms[i]) == pytest.approx(float(expected), abs=1e-10)
    assert used == [3] * 7  # every x contrasts three other samples


def test_a_conditional_that_ignores_x_gives_zero():
    x, y = _gaussian_pairs(300)
    normal = torch.distributions.Normal(0.0, 1.0)
    terms = contrastive_terms(lambda x, y: normal.log_prob(y[:, 0]), x, y, 64, seed=0)
    assert torch.allclose(terms, torch.zeros(300, dtype=torch.float64), atol=1e-12)


def test_the_bound_never_exceeds_log_k():
    """Nearly deterministic pairs (MI ~ 4.6 nats) with K = 16: every term is at most log 16
    and the mean comes within 0.2 nats of it."""
    x, y = _gaussian_pairs(400, rho=0.99995)
    terms = contrastive_terms(_true_conditional(0.99995), x, y, 16, seed=0)
    assert float(terms.max()) <= math.log(16) + 1e-12
    assert float(terms.mean()) > math.log(16) - 0.2


def test_with_the_true_conditional_it_is_close_to_the_truth_and_below_it():
    """n = 4000, K = 256: the bound's mean is within 3 standard errors of the true MI
    (0.413 nats), and not above it by more than noise (its expectation is below)."""
    x, y = _gaussian_pairs(4000, seed=1)
    terms = contrastive_terms(_true_conditional(RHO), x, y, 256, seed=0)
    mean, error = float(terms.mean()), float(terms.std() / math.sqrt(len(terms)))
    assert abs(mean - TRUE_MI) < 3 * error + 0.01
    assert mean < TRUE_MI + 3 * error


def test_fewer_than_two_samples_is_refused():
    x, y = _gaussian_pairs(5)
    with pytest.raises(ValueError, match="at least 2"):
        contrastive_terms(_true_conditional(RHO), x, y, 1, seed=0)


def test_the_bound_replaces_the_estimate_only_when_higher_by_the_margin():
    """Paired terms: a bound above the DoE by 0.05 with tiny noise is read out; one above by
    less than 2 standard errors of the paired difference is not; the details say both."""
    g = torch.Generator().manual_seed(0)
    doe = torch.randn(2000, generator=g, dtype=torch.float64) + 0.8
    config = AutoConfig()
    details: dict = {}
    higher = doe + 0.05 + 0.01 * torch.randn(2000, generator=g, dtype=torch.float64)
    terms, used = _read_out(doe, (higher, 256), config, details)
    assert used and terms is higher
    assert details["contrastive_gain"] == pytest.approx(0.05, abs=0.002)
    noisy = doe + 0.01 + 1.0 * torch.randn(2000, generator=g, dtype=torch.float64)
    terms, used = _read_out(doe, (noisy, 256), config, details)
    assert not used and terms is doe
    assert details["contrastive_gain_std_error"] > 0.01
    assert details["contrasts"] == 256
    terms, used = _read_out(doe, None, AutoConfig(contrasts=0), {})
    assert not used and terms is doe


def test_cross_fitting_records_the_contrasts_each_fold_allowed():
    """Five folds of 60 samples: each held-out sample is contrasted within its own fold, so
    K is 60, not the 256 asked for (nor the 300 samples of all folds together)."""
    x, y = _gaussian_pairs(300)
    folds = list(torch.tensor_split(seeded_permutation(300, 0), 5))
    rest = torch.cat(folds[1:])
    chosen = copula_densities(_COPULA_FITS["Gaussian copula"](x[rest], y[rest]), 0.0)
    config = AutoConfig(folds=5, flows=())
    terms, bound, *_ = _cross_fit(chosen, (x, y), folds, config, seed=0, deadline=math.inf)
    assert bound is not None
    bound_terms, contrasts = bound
    assert contrasts == 60 and bound_terms.shape == terms.shape == (300,)
    assert _cross_fit(chosen, (x, y), folds, AutoConfig(contrasts=0), 0, math.inf)[1] is None


def test_contrasts_config_is_checked():
    with pytest.raises(ValueError, match="contrasts"):
        AutoConfig(contrasts=1)
    assert AutoConfig(contrasts=0).contrasts == 0


def test_a_bound_near_its_ceiling_is_flagged():
    """The bound is never above log K: read out within 0.5 nats of it, the MI may be
    higher, and the warning says what to raise."""
    details = {"reason": "q(y|x): affine flow", "contrastive_gain": 0.1}
    details |= {"contrastive_gain_std_error": 0.01, "contrasts": 256}
    assert _explain_bound(dict(details), mi=1.0) == ()
    near = dict(details)
    (warning,) = _explain_bound(near, mi=math.log(256) - 0.2)
    assert "AutoConfig.contrasts" in warning and "ceiling" in warning
    assert "contrastive lower bound" in near["reason"]
