"""``estimate_mi(x, y)``'s default, ``estimator="auto"`` (``mist_core.training.auto``): where
a closed-form copula is exact it is chosen, where it is wrong a flow is; the margin rule;
the model on new samples; cross-fitting and the test split; budget warnings; the config's
errors; and standard errors that hold over seeds.

Every test runs torch on one thread: the flows train on batches of 256, where more threads
only add contention (on a busy 2-core machine, 30x slower). The flow tests bound training
by epochs, not seconds, so their results do not depend on the machine's load."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from bench.accuracy.bmi40 import BMI40_TASKS
from mist_core import estimate_mi
from mist_core.estimators.copula import fit_gaussian_copula
from mist_core.marginals import Gaussianizer
from mist_core.training.auto import AutoConfig
from mist_core.training.candidates import Density, choose, mixture_density

N = 4000
#: small flows, trained for at most 40 epochs (about 1 s a task on one thread)
FAST = AutoConfig(hidden_dims=(32, 32), folds=1, max_epochs=40, max_seconds=600)
#: closed forms only: the Gaussian copula and nothing to train
GAUSSIAN_ONLY = AutoConfig(flows=(), student=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _task(task_id: str, n: int = N, seed: int = 0):
    """``(x, y, true MI)`` of one Beyond Normal task."""
    sampler = BMI40_TASKS[task_id]()
    x, y = sampler.sample(n, torch.Generator().manual_seed(seed))
    return x, y, sampler.mutual_information()


def _gaussian_copula_mi(x: torch.Tensor, y: torch.Tensor) -> float:
    return fit_gaussian_copula(Gaussianizer(x)(x), Gaussianizer(y)(y)).mi()


_cache: dict = {}


def _estimate(task_id: str, config: AutoConfig | None = None, **options):
    """``(result, x, y, truth)``, each case computed once per module."""
    key = (task_id, config, tuple(sorted(options.items())))
    if key not in _cache:
        x, y, truth = _task(task_id)
        _cache[key] = (estimate_mi(x, y, device="cpu", auto=config, **options), x, y, truth)
    return _cache[key]


# -- the choice -------------------------------------------------------------------------------

COPULA_EXACT = ["half_cube-multinormal-sparse-3-3-2-2.0", "normal_cdf-1v1-normal-0.75"]


@pytest.mark.parametrize("task_id", COPULA_EXACT)
def test_gaussian_copula_is_chosen_where_it_is_exact(task_id):
    """Default config (5 folds, both flows trained and rejected). Measured: 1.029 and 0.422
    against 1.022 and 0.413, standard errors 0.018 and 0.012."""
    result, _, _, truth = _estimate(task_id)
    assert result.estimator == "Gaussian copula"
    details = result.details
    assert details["conditional"] == details["marginal"] == "Gaussian copula"
    assert "closed form" in details["evaluated_on"]
    assert result.n_test == N  # the closed form is refitted and averaged on every sample
    assert result.mi == pytest.approx(truth, abs=0.05)
    assert result.mi == pytest.approx(details["plug_in_mi"] - details["bias_correction"])
    assert 0 < result.std_error < 0.05
    reason = details["reason"]
    assert isinstance(reason, str) and len(reason) > 40 and "Gaussian copula" in reason
    flows = [r["name"] for r in details["candidates_conditional"][1:]]
    # the flows and the mixture of all three were tried, and lost
    assert flows == [
        "affine flow",
        "spline flow",
        "mixture of Gaussian copula + affine flow + spline flow",
    ]
    assert not any("budget" in w for w in result.warnings)


def test_student_copula_is_chosen_for_a_student_task():
    """student-identity-2-2-1: all 0.432 nats are tail dependence (the Gaussian copula
    finds ~0). Measured: 0.409 (standard error 0.014), dof ~1."""
    result, x, y, truth = _estimate("student-identity-2-2-1")
    assert result.estimator == "Student-t copula"
    assert "closed form" in result.details["evaluated_on"]
    assert result.mi == pytest.approx(truth, abs=0.05)
    assert 0.5 <= result.details["dof"] <= 2.0
    assert _gaussian_copula_mi(x, y) < 0.05
    assert "Student-t copula" in result.details["reason"]


COPULA_WRONG = ["1v1-additive-0.1", "swissroll_x-normal_cdf-1v1-normal-0.75"]


@pytest.mark.parametrize("task_id", COPULA_WRONG)
def test_a_flow_is_chosen_where_the_copula_is_wrong(task_id):
    """The Gaussian copula misses 0.44 nats of 1.71 (additive) and 0.38 of 0.41 (Swiss
    roll); the chosen flow (40 epochs of a small one) misses 0.08 and 0.03 (measured)."""
    result, x, y, truth = _estimate(task_id, FAST, test_fraction=0.4)
    assert result.details["conditional"] in ("affine flow", "spline flow")
    assert "flow" in result.estimator
    copula_error = abs(_gaussian_copula_mi(x, y) - truth)
    assert copula_error > 0.3
    assert abs(result.mi - truth) < min(0.15, 0.3 * copula_error)
    assert "over Gaussian copula" in result.details["reason"]
    # one fold: the estimate is on the held-out test_fraction
    assert result.details["evaluated_on"] == "held-out test split"
    assert result.n_test == round(N * 0.4) and result.n_train == N - round(N * 0.4)


def test_cross_fitting_evaluates_every_sample():
    """Five folds: a flow fitted on four folds evaluates the fifth, all five in turn."""
    config = AutoConfig(hidden_dims=(32, 32), flows=("affine",), folds=5, max_epochs=20)
    result, _, _, truth = _estimate("swissroll_x-normal_cdf-1v1-normal-0.75", config)
    assert result.details["conditional"] == "affine flow"
    assert result.details["evaluated_on"] == "5-fold cross-fitting"
    assert result.n_test == N and result.n_train == N - N // 5
    assert result.mi == pytest.approx(truth, abs=0.1)
    # the flow fits this task: the contrastive bound from its q(y|x), computed on the same
    # folds, is no higher than the DoE, which is kept
    details = result.details
    assert details["read_out"] == "difference of entropies" and result.mi == details["doe_mi"]
    assert details["contrastive_bound"] == pytest.approx(details["doe_mi"], abs=0.03)
    assert details["contrastive_gain"] < 2 * details["contrastive_gain_std_error"]
    # each held-out sample is contrasted within its own fold: K is capped by the fold's size
    assert details["contrasts"] == min(256, N // 5)


def test_a_lower_bound_above_the_doe_estimate_replaces_it():
    """A spiral (BMI's normal_cdf 3 x 3, true 1.02 nats): a small affine flow misses part of
    q(y|x)'s structure and the DoE reads 0.87; the contrastive bound from that q(y|x) on the
    same two folds reads 0.91 (measured), above it by many standard errors, so it is the
    estimate, under its own name, below the truth."""
    config = AutoConfig(
        hidden_dims=(32, 32), flows=("affine",), mixture=False, max_epochs=20, folds=2
    )
    result, _, _, truth = _estimate("spiral-normal_cdf-multinormal-sparse-3-3-2-2.0", config)
    details = result.details
    assert details["conditional"] == "affine flow"
    assert details["read_out"] == "contrastive bound"
    assert result.estimator == "affine flow q(y|x), contrastive bound"
    assert result.mi == details["contrastive_bound"] > details["doe_mi"]
    assert details["contrastive_gain"] > 4 * details["contrastive_gain_std_error"]
    assert result.mi < truth
    assert "contrastive lower bound" in details["reason"]
    assert result.n_test == N


def test_the_same_seed_gives_the_same_flow_estimate():
    x, y, _ = _task("swissroll_x-normal_cdf-1v1-normal-0.75", n=2000)
    config = AutoConfig(hidden_dims=(16,), flows=("affine",), folds=1, max_epochs=5)
    a, b, c = (estimate_mi(x, y, device="cpu", auto=config, seed=s) for s in (0, 0, 1))
    assert a.details["conditional"] == "affine flow"
    assert a.mi == b.mi and a.std_error == b.std_error
    assert c.mi != a.mi


def test_monotone_maps_do_not_change_a_closed_form_estimate():
    """half_cube acts on every coordinate and keeps the ranks: same Gaussianised data."""
    raw = estimate_mi(*_task("multinormal-sparse-3-3-2-2.0")[:2], device="cpu", auto=GAUSSIAN_ONLY)
    cubed = estimate_mi(
        *_task("half_cube-multinormal-sparse-3-3-2-2.0")[:2], device="cpu", auto=GAUSSIAN_ONLY
    )
    assert cubed.mi == pytest.approx(raw.mi, abs=1e-6)


# -- the margin rule --------------------------------------------------------------------------


def _density(name: str, scores: torch.Tensor) -> Density:
    return Density(name, lambda x, y: scores)


def test_a_candidate_must_win_by_the_margin():
    """Each candidate against the current choice, on the paired difference of its
    validation log-likelihoods: a tie (noise only), a gain below ``min_gain`` with no noise,
    and a gain below 2 standard errors all keep the simpler choice."""
    n = 2000
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    noise = (noise - noise.mean()) / noise.std()  # mean 0, std 1: gains are exact
    valid = (torch.zeros(n, 1), torch.zeros(n, 1))
    candidates = [
        _density("base", base),
        _density("tie", base + 0.05 * noise),  # gain 0
        _density("tiny", base + 1e-3),  # gain 1e-3 < min_gain, standard error 0
        _density("noisy", base + 0.01 + noise),  # gain 0.01 < 2 x 0.022
    ]
    chosen, records = choose(candidates, valid, margin=2.0, min_gain=2e-3)
    assert chosen == 0
    assert [r["name"] for r in records] == ["base", "tie", "tiny", "noisy"]
    assert records[1]["gain_over_choice"] == pytest.approx(0.0, abs=1e-12)
    assert records[2]["gain_over_choice"] == pytest.approx(1e-3)
    assert records[3]["gain_std_error"] == pytest.approx(1 / math.sqrt(n), rel=1e-6)
    assert "gain_over_choice" not in records[0]

    clear = base + 0.2 + noise  # 9 standard errors
    candidates += [
        _density("clear", clear),
        _density("as good as clear", clear + 0.05 * noise.flip(0) - 0.05 * noise),
        _density("better than base only", base + 0.1),
        _density("broken", (clear + 1.0).index_fill(0, torch.tensor([0]), -math.inf)),
        _density("nan", torch.full((n,), math.nan, dtype=torch.float64)),
    ]
    chosen, records = choose(candidates, valid, margin=2.0, min_gain=2e-3)
    assert chosen == 4
    # later candidates are compared with "clear", the current choice, not with "base"
    assert records[6]["gain_over_choice"] == pytest.approx(-0.1)

    chosen, _ = choose(candidates[:4] + [_density("clearly better", base + 0.5)], valid, 2.0, 2e-3)
    assert chosen == 4


# -- the model on new samples -----------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [("1v1-additive-0.1", FAST, {"test_fraction": 0.4}), ("student-identity-2-2-1", None, {})],
    ids=["flow", "student-copula"],
)
def test_the_model_scores_new_raw_samples(case):
    """``result.model.terms`` maps fresh raw samples through the fitted Gaussianisers: its
    mean log-ratio estimates the same quantity as the result (within 4 combined standard
    errors, plus the closed form's bias correction, which the raw mean does not apply)."""
    task_id, config, options = case
    result, _, _, _ = _estimate(task_id, config, **options)
    x_new, y_new, _ = _task(task_id, n=3000, seed=123)
    log_ratio = result.model.terms(x_new, y_new).log_ratio
    assert log_ratio.shape == (3000,) and torch.isfinite(log_ratio).all()
    error = math.hypot(result.std_error, float(log_ratio.std()) / math.sqrt(3000))
    slack = 4 * error + result.details.get("bias_correction", 0.0)
    assert float(log_ratio.mean()) == pytest.approx(result.mi, abs=slack)


# -- budgets and configuration ----------------------------------------------------------------


def test_a_flow_cut_short_by_its_budget_warns():
    """One epoch: the spline flow already beats the copula on the additive task, but it
    was still improving, and the result says so and what to raise."""
    result, _, _, truth = _estimate("1v1-additive-0.1", AutoConfig(max_epochs=1, folds=1))
    assert "flow" in result.details["conditional"]
    budget = [w for w in result.warnings if "budget" in w]
    assert budget, result.warnings
    assert "max_epochs" in budget[0] and "1 epochs" in budget[0]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"flows": ("bogus",)}, "unknown flows"),
        ({"folds": 0}, "folds must be >= 1"),
        ({"ensemble": 0}, "ensemble must be >= 1"),
        ({"valid_fraction": 1.5}, "valid_fraction must lie in"),
        ({"valid_fraction": 0.0}, "valid_fraction must lie in"),
    ],
)
def test_config_errors(options, match):
    with pytest.raises(ValueError, match=match):
        AutoConfig(**options)


# -- standard errors that hold ----------------------------------------------------------------


def test_closed_form_standard_errors_cover_the_truth():
    """40 seeds of N = 2000 on the 3 x 3 sparse Gaussian task, Gaussian copula only: the
    truth within 1.96 standard errors in at least 34 of 40. With the nominal 95%, covering
    33 or fewer has probability P(Binom(40, 0.95) <= 33) = 0.0034; measured over 200 seeds:
    94.5%. An SE off by a factor of 1.5 would cover ~80% and fail."""
    seeds, covered = 40, 0
    assert stats.binom.cdf(33, seeds, 0.95) < 0.004
    for seed in range(seeds):
        x, y, truth = _task("multinormal-sparse-3-3-2-2.0", n=2000, seed=seed)
        result = estimate_mi(x, y, device="cpu", seed=seed, auto=GAUSSIAN_ONLY)
        assert result.estimator == "Gaussian copula"
        covered += abs(result.mi - truth) <= 1.96 * result.std_error
    assert covered >= 34, f"{covered} of {seeds} seeds covered the truth"


def _binary_target(n: int = 3000, seed: int = 0):
    """``x: [n, 2]`` and ``y = 1[x_0 + noise / 2 > 0]``, with the exact MI by quadrature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, :1] + 0.5 * torch.randn(n, 1, generator=g) > 0).float()
    grid = torch.linspace(-8, 8, 20_001, dtype=torch.float64)
    p = torch.special.ndtr(2 * grid)  # P(y = 1 | x_0)
    h = -(p * p.clamp_min(1e-300).log() + (1 - p) * (1 - p).clamp_min(1e-300).log())
    weight = torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
    truth = math.log(2) - float(torch.trapezoid(h * weight, grid))
    return x, y, truth


def test_a_discrete_target_gets_a_classifier():
    x, y, truth = _binary_target()
    result = estimate_mi(x, y, device="cpu", auto=AutoConfig(hidden_dims=(16,), max_epochs=60))
    assert result.estimator.endswith("(discrete y)")
    assert result.details["target"] == "discrete (2 values)"
    assert "classifier" in result.details["reason"]
    assert abs(result.mi - truth) < max(0.03, 4 * result.std_error)
    assert result.mi <= math.log(2) + 3 * result.std_error  # never above H(Y) but for noise
    assert result.model.terms(x[:7], y[:7]).log_ratio.shape == (7,)


def test_deterministic_coordinates_give_a_finite_number_and_a_warning():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 1, generator=g)
    result = estimate_mi(x, x**3, device="cpu", auto=AutoConfig(flows=()))
    assert math.isfinite(result.mi) and result.mi > 5
    assert any("deterministic" in text for text in result.warnings)


def test_options_of_a_named_estimator_are_refused_under_auto():
    x, y, _ = _task("1v1-normal-0.75", n=600)
    with pytest.raises(ValueError, match="AutoConfig"):
        estimate_mi(x, y, estimator_options={"hidden_dims": [8]})
    with pytest.raises(ValueError, match="AutoConfig"):
        estimate_mi(x, y, hidden_dims=[8])


# -- the mixture candidate ----------------------------------------------------------------------


def _normal_density(name: str, mean: float, scale: float) -> Density:
    """q(y) = N(mean, scale^2) of a 1-d y, as a candidate."""
    normal = torch.distributions.Normal(mean, scale)
    return Density(name, lambda x, y: normal.log_prob(y[:, 0]).double())


def test_the_mixture_fits_its_weights_and_is_scored_out_of_sample():
    """y from 0.7 N(-2, 1) + 0.3 N(2, 1): the mixture of the two components finds the
    weights, is chosen over either, and its scores for the choice are out of sample (lower
    on average than with the weights fitted on the same samples)."""
    generator = torch.Generator().manual_seed(0)
    n = 4000
    left = torch.rand(n, generator=generator) < 0.7
    y = torch.where(left, -2.0, 2.0) + torch.randn(n, generator=generator)
    valid = (torch.zeros(n, 1, dtype=torch.float64), y[:, None].double())
    parts = [_normal_density("left", -2.0, 1.0), _normal_density("right", 2.0, 1.0)]
    mixture = mixture_density(parts, valid)
    assert mixture.name == "mixture of left + right"
    assert mixture.weights == pytest.approx((0.7, 0.3), abs=0.03)
    in_sample = mixture.log_prob(*valid)
    assert mixture.held_out is not None and mixture.held_out.shape == (n,)
    assert float(mixture.held_out.mean()) <= float(in_sample.mean())
    assert float(mixture.held_out.mean()) == pytest.approx(float(in_sample.mean()), abs=2e-3)
    which, records = choose([*parts, mixture], valid, margin=2.0, min_gain=2e-3)
    assert which == 2 and records[2]["weights"] == pytest.approx([0.7, 0.3], abs=0.03)


def test_a_mixture_with_nothing_to_add_is_not_chosen():
    """Two candidates, one the truth: the mixture cannot beat it by the margin."""
    generator = torch.Generator().manual_seed(1)
    y = torch.randn(4000, 1, generator=generator, dtype=torch.float64)
    valid = (torch.zeros(4000, 1, dtype=torch.float64), y)
    parts = [_normal_density("truth", 0.0, 1.0), _normal_density("wide", 0.0, 3.0)]
    which, _ = choose([*parts, mixture_density(parts, valid)], valid, 2.0, 2e-3)
    assert which == 0
