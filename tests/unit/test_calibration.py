"""Coverage of highest-density regions: exact on a density whose truth draws are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mist_core.calibration import LEVELS, coverage, hpd_rank
from mist_core.posterior import hpd_thresholds

H, W = 120, 100
CENTRE = np.array([50.0, 60.0])  # (x, y)
SIGMA = np.array([6.0, 9.0])


def _gaussian_log_prob(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``[H, W]`` log-density of N(CENTRE, (scale SIGMA)^2) at the pixel centres, and the
    centres ``[H, W, 2]`` as (x, y)."""
    ys, xs = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    grid = np.stack([xs, ys], axis=-1)
    z = (grid - CENTRE) / (scale * SIGMA)
    return -0.5 * (z**2).sum(-1) - np.log(2 * math.pi * (scale**2) * SIGMA.prod()), grid


def _log_prob_at(point: np.ndarray, scale: float = 1.0) -> float:
    z = (point - CENTRE) / (scale * SIGMA)
    return float(-0.5 * (z**2).sum() - np.log(2 * math.pi * (scale**2) * SIGMA.prod()))


def _ranks(n: int, seed: int, density_scale: float) -> np.ndarray:
    """HPD ranks of ``n`` truths drawn from N(CENTRE, SIGMA^2), under a density whose spread
    is ``density_scale`` times the truth's (1: the true density)."""
    log_prob, _ = _gaussian_log_prob(density_scale)
    truths = CENTRE + SIGMA * np.random.default_rng(seed).standard_normal((n, 2))
    return np.array([hpd_rank(log_prob, _log_prob_at(t, density_scale)) for t in truths])


def test_the_true_density_is_calibrated_within_binomial_error():
    table = coverage(_ranks(4000, seed=0, density_scale=1.0))
    assert [c.level for c in table] == list(LEVELS)
    for c in table:
        # 4 standard errors (pixel discretisation adds a little): 9 levels, rarely wrong
        assert abs(c.gap) < 4 * c.std_error + 0.01, (c.level, c.observed)
        assert c.n == 4000 and c.std_error == pytest.approx(
            math.sqrt(c.level * (1 - c.level) / 4000)
        )


def test_a_too_narrow_and_a_too_wide_density_are_caught():
    narrow = coverage(_ranks(2000, seed=1, density_scale=0.7), levels=(0.5, 0.9))
    wide = coverage(_ranks(2000, seed=1, density_scale=1.4), levels=(0.5, 0.9))
    for c in narrow:
        assert c.gap < -5 * c.std_error, "overconfident regions hold the truth too rarely"
    for c in wide:
        assert c.gap > 5 * c.std_error, "underconfident regions hold it too often"


def test_rank_agrees_with_the_regions_the_pages_draw():
    rng = np.random.default_rng(3)
    log_prob = rng.normal(size=(30, 20)) * 3.0
    levels = (0.1, 0.5, 0.9)
    thresholds = hpd_thresholds(log_prob, levels)
    for value in log_prob.ravel():
        rank = hpd_rank(log_prob, float(value))
        for level in levels:
            assert (rank < level) == (value >= thresholds[level]), (value, level)


def test_rank_bounds_and_errors():
    log_prob, _ = _gaussian_log_prob()
    assert hpd_rank(log_prob, float(log_prob.max())) == 0.0
    assert hpd_rank(log_prob, float(log_prob.min()) - 1.0) == pytest.approx(1.0)
    assert hpd_rank(log_prob, -math.inf) == 1.0
    with pytest.raises(ValueError, match="empty"):
        hpd_rank(np.array([]), 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        coverage([0.2, 1.5])
    with pytest.raises(ValueError, match="no HPD ranks"):
        coverage([])
    with pytest.raises(ValueError, match=r"levels must lie in \(0, 1\)"):
        coverage([0.2], levels=(1.0,))


def test_an_experiment_is_evaluated_face_by_face_on_the_pages_grids():
    import torch

    from mist_core.calibration import evaluate_calibration
    from mist_core.experiment import LandmarkExperiment, preset
    from mist_core.posterior import posterior_maps

    config = preset(
        "demo-cpu",
        train_size=4,
        test_size=5,
        image_size=(32, 32),
        encoders=("random_init",),
        landmarks=("nose", "left_eye"),
        preload=False,
    )
    experiment = LandmarkExperiment(config)
    results = evaluate_calibration(experiment, levels=(0.5, 0.9), max_faces=3)
    assert [(r.landmark, r.encoder) for r in results] == [
        ("nose", None),
        ("nose", "random_init"),
        ("left_eye", None),
        ("left_eye", "random_init"),
    ]
    faces = experiment.source_images("test")
    for result in results:
        assert result.n == 3 and [c.level for c in result.coverage] == [0.5, 0.9]
        assert all(0.0 <= r <= 1.0 for r in result.ranks)
        # the same numbers as the page's maps, face by face
        expected_nll, expected_ranks = [], []
        for index in range(3):
            item = faces[index]
            maps = posterior_maps(
                experiment, item["image"], result.landmark, truth=item[result.landmark]
            )
            (m,) = [m for m in maps if m.encoder == result.encoder]
            expected_nll.append(-m.log_prob_at_truth)
            expected_ranks.append(hpd_rank(m.log_prob, m.log_prob_at_truth))
        assert result.nll == pytest.approx(float(np.mean(expected_nll)), rel=1e-6)
        assert result.ranks == pytest.approx(expected_ranks, abs=1e-9)
        observed = [float(np.mean(np.array(expected_ranks) < c.level)) for c in result.coverage]
        assert [c.observed for c in result.coverage] == observed
    assert torch.is_grad_enabled() and experiment.model.training
