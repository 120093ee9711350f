"""Coverage of highest-density regions: exact on a density whose truth draws are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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


def test_rank_of_a_truth_below_nearly_every_pixel_is_at_most_one():
    """The mass of all pixels but one negligible one, summed in other blocks than the
    total, came out one ulp above 1 (CI's tiny run: its calibration then failed)."""
    rng = np.random.default_rng(0)
    over = 0
    for _ in range(300):
        flat = rng.normal(0.0, 3.0, int(rng.integers(10, 400)))
        k = int(rng.integers(0, flat.size))
        flat[k] = flat.min() - 40.0  # exp(-40) of the mass: below an ulp of the total
        top = flat.max()
        probs = np.exp(flat - top)
        over += probs[flat > flat[k]].sum() / probs.sum() > 1.0  # what the sum alone gives
        rank = hpd_rank(flat, float(flat[k]) + 1e-9)
        assert 0.0 <= rank <= 1.0
        assert rank == pytest.approx(1.0)
    assert over > 0, "no case where the plain ratio overshoots: the test would prove nothing"
    coverage([hpd_rank(flat, float(flat[k]) + 1e-9)])  # accepted


def test_rank_of_a_broken_density_is_an_error_not_a_number():
    grid = np.zeros((4, 4))
    assert hpd_rank(np.where(np.eye(4) > 0, -math.inf, grid), 0.5) == 0.0  # -inf weighs 0
    for bad in (math.nan, math.inf):
        broken = grid.copy()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match="density is broken"):
            hpd_rank(broken, 0.0)
    with pytest.raises(ValueError, match="density is broken"):
        hpd_rank(np.full((2, 2), -math.inf), 0.0)


def test_an_experiment_is_evaluated_face_by_face_on_the_pages_grids():
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


def test_recalibration_on_validation_ranks_restores_the_coverage_of_fresh_faces():
    from mist_core.calibration import fit_recalibration

    for scale in (0.7, 1.4):  # too narrow, too wide
        recalibration = fit_recalibration(_ranks(1500, seed=10, density_scale=scale))
        fresh = _ranks(2000, seed=11, density_scale=scale)
        before = coverage(fresh, levels=(0.5, 0.9))
        after = coverage(fresh, levels=(0.5, 0.9), recalibration=recalibration)
        for b, a in zip(before, after, strict=True):
            assert abs(b.gap) > 5 * b.std_error, "the density is miscalibrated to start with"
            # the validation ranks' own spread adds to the fresh faces': allow both
            assert abs(a.gap) < 4 * a.std_error * math.sqrt(1 + 2000 / 1500), (scale, a)


def test_recalibration_masses():
    from mist_core.calibration import Recalibration, fit_recalibration

    ranks = [0.9, 0.1, 0.5, 0.3]
    recalibration = fit_recalibration(ranks)
    assert recalibration.faces == 4
    masses = [recalibration.mass(level) for level in (0.2, 0.4, 0.6, 0.8)]
    assert masses == sorted(masses) and masses[0] > 0.1 and masses[0] == pytest.approx(0.1)
    assert recalibration.mass(0.95) == 1.0, "too few faces for that level: the whole grid"
    # every validation rank below mass(level) for the ceil((n + 1) level) smallest ones
    assert sum(r < recalibration.mass(0.6) for r in ranks) == 3
    # between the fitted levels the masses are interpolated
    fit = Recalibration((0.2, 0.6), (0.3, 0.7), faces=10)
    assert fit.mass(0.4) == pytest.approx(0.5) and fit.mass(0.1) == pytest.approx(0.15)
    assert fit.mass(0.8) == pytest.approx(0.85)
    assert Recalibration.from_dict(fit.to_dict()) == fit
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        fit.mass(1.0)
    with pytest.raises(ValueError, match="not decrease"):
        Recalibration((0.2, 0.6), (0.7, 0.3), faces=10)
    with pytest.raises(ValueError, match="at least one face"):
        fit_recalibration([])


def test_regions_are_drawn_at_the_recalibrated_masses():
    """posterior.landmark_maps draws each density's regions at its own recalibrated masses,
    keyed by the nominal level; the marginal without a fit stays at the nominal mass."""
    from mist_core.calibration import Recalibration
    from mist_core.experiment import LandmarkExperiment, preset
    from mist_core.posterior import encode, hpd_thresholds, landmark_maps

    experiment = LandmarkExperiment(
        preset("demo-cpu", image_size=(32, 32), encoders=("random_init",), landmarks=("nose",))
    )
    experiment.model.eval()
    image = torch.rand(3, 40, 32)
    features = encode(experiment, image, ["random_init"])
    fit = Recalibration((0.5, 0.9), (0.62, 0.97), faces=100)
    marginal, conditional = landmark_maps(
        experiment, features, "nose", (40, 32), None, (0.5, 0.9), {"random_init": fit}
    )
    assert not marginal.recalibrated and marginal.drawn_masses == {0.5: 0.5, 0.9: 0.9}
    assert marginal.levels == hpd_thresholds(marginal.log_prob, (0.5, 0.9))
    assert conditional.recalibrated and conditional.drawn_masses == {0.5: 0.62, 0.9: 0.97}
    expected = hpd_thresholds(conditional.log_prob, (0.62, 0.97))
    assert conditional.levels == {0.5: expected[0.62], 0.9: expected[0.97]}
    # with a truth: inside the drawn region exactly when its HPD rank is below the drawn mass
    for truth in ((16.0, 20.0), (3.0, 37.0), (30.5, 2.5)):
        for m in landmark_maps(
            experiment, features, "nose", (40, 32), truth, (0.5, 0.9), {"random_init": fit}
        ):
            rank = hpd_rank(m.log_prob, m.log_prob_at_truth)
            for level, mass in m.drawn_masses.items():
                assert m.holds_truth(level) == (rank < mass), (truth, level, rank, mass)
    with pytest.raises(KeyError, match="drawn"):
        m.holds_truth(0.7)
    assert marginal.holds_truth(0.5) is None, "no truth given"
    # a region of mass 1 is the whole grid
    whole = Recalibration((0.5,), (1.0,), faces=1)
    (_, c) = landmark_maps(
        experiment, features, "nose", (40, 32), None, (0.5,), {"random_init": whole}
    )
    assert c.levels[0.5] == pytest.approx(float(c.log_prob.min()))


def test_report_round_trips_through_json_and_pools_the_landmarks():
    import json

    from mist_core.calibration import (
        CalibrationReport,
        DensityCalibration,
        fit_recalibration,
    )

    levels = (0.5, 0.9)
    rows = []
    for landmark, ranks in (("nose", _ranks(200, 1, 1.2)), ("left_eye", _ranks(100, 2, 0.8))):
        fit = fit_recalibration(_ranks(300, 3, 0.9))
        rows.append(
            DensityCalibration(
                encoder="trained",
                landmark=landmark,
                faces=len(ranks),
                coverage=tuple(coverage(ranks, levels)),
                nll=1.5,
                median_distance=2.0,
                recalibration=fit,
                recalibrated=tuple(coverage(ranks, levels, fit)),
            )
        )
    report = CalibrationReport(levels, "test", tuple(rows))
    back = CalibrationReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back == report
    assert back.recalibrations("nose") == {"trained": rows[0].recalibration}
    assert back.row("trained", "left_eye") == rows[1]
    assert back.row(None, "nose") is None
    pooled = back.pooled("trained")
    assert pooled is not None and pooled[0].n == 300
    expected = (rows[0].coverage[0].observed * 200 + rows[1].coverage[0].observed * 100) / 300
    assert pooled[0].observed == pytest.approx(expected)
    for bad in ({}, {"levels": [0.5], "split": "test", "rows": [{"encoder": 3}]}, [1, 2]):
        with pytest.raises(ValueError, match="unreadable 'calibration'"):
            CalibrationReport.from_dict(bad)


def test_validation_faces_are_the_training_faces_held_out():
    from mist_core.calibration import evaluate_calibration
    from mist_core.experiment import LandmarkExperiment, preset
    from mist_core.experiment.data import train_valid_indices

    config = preset(
        "demo-cpu",
        train_size=6,
        test_size=2,
        valid_fraction=0.4,
        image_size=(32, 32),
        encoders=("random_init",),
        landmarks=("nose",),
        preload=False,
    )
    experiment = LandmarkExperiment(config)
    held_out = train_valid_indices(6, 0.4, config.seed)[1]
    assert len(held_out) == 2
    (marginal, _) = evaluate_calibration(experiment, "valid", levels=(0.5,))
    train = experiment.source_images("train")
    q = experiment.pair_estimators.estimators["random_init;nose"].q_Y
    with torch.no_grad():
        expected = [-float(q.log_prob(train[i]["nose"])) for i in held_out]
    assert marginal.n == 2 and marginal.nll == pytest.approx(float(np.mean(expected)), rel=1e-6)
    no_valid = LandmarkExperiment(config.replace(valid_fraction=0.0))
    with pytest.raises(ValueError, match="valid_fraction=0"):
        evaluate_calibration(no_valid, "valid")


def test_calibrate_fits_on_the_validation_faces_and_reports_the_test_faces():
    from mist_core.calibration import calibrate, evaluate_calibration, fit_recalibration
    from mist_core.experiment import LandmarkExperiment, preset

    config = preset(
        "demo-cpu",
        train_size=10,
        test_size=3,
        valid_fraction=0.3,
        image_size=(32, 32),
        encoders=("random_init",),
        landmarks=("nose",),
        preload=False,
    )
    experiment = LandmarkExperiment(config)
    seen = []
    report = calibrate(experiment, progress=lambda *args: seen.append(args))
    # before each batch (one here: 3 faces each), then done
    assert seen == [("valid", 0, 3), ("valid", 3, 3), ("test", 0, 3), ("test", 3, 3)]
    valid = evaluate_calibration(experiment, "valid")
    test = evaluate_calibration(experiment, "test")
    for row, v, t in zip(report.rows, valid, test, strict=True):
        assert row.recalibration == fit_recalibration(v.ranks), "fitted on the held-out faces"
        assert row.faces == 3 and row.coverage == t.coverage
        assert row.recalibrated == tuple(coverage(t.ranks, report.levels, row.recalibration))
    assert all(r.recalibration is None for r in calibrate(experiment, valid_faces=0).rows)


def _plain_scores(log_prob: torch.Tensor, at_truth: float, truth: torch.Tensor) -> tuple:
    """One face's HPD rank, NLL and mode-to-truth distance, as the per-face loop computed
    them: float64 numpy over the whole grid ``log_prob [H, W]``."""
    grid = log_prob.double().numpy()
    probs = np.exp(grid - grid.max())
    rank = min(1.0, float(probs[grid > at_truth].sum() / probs.sum()))
    i, j = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return rank, -at_truth, math.dist((j + 0.5, i + 0.5), (float(truth[0]), float(truth[1])))


def _densities_that_depend_on_the_face(experiment) -> None:
    """Moves the heads away from the identity start (N(0, I) whatever the face): densities
    over the image that depend on the face, with NLLs of 8-12 nats as after training."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in experiment.pair_estimators.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        for module in experiment.pair_estimators.modules():
            if type(module).__name__ == "EMANorm" and module.features == 2:
                module.mean.copy_(torch.tensor([89.0, 109.0]))
                module.std.copy_(torch.tensor([12.0, 15.0]))


def test_batched_calibration_gives_the_face_by_face_numbers():
    """evaluate_calibration evaluates faces in batches (one grid against a batch of
    contexts, the marginal's map once, ranks without sorting, faces drawn ahead in worker
    processes): the ranks, NLLs and distances of a plain reference that encodes one face at
    a time and evaluates every density at every pixel with one context per pixel."""
    from mist_core.calibration import evaluate_calibration
    from mist_core.experiment import LandmarkExperiment, preset
    from mist_core.posterior import pixel_grid

    config = preset(
        "demo-cpu",
        train_size=4,
        test_size=7,
        image_size=(32, 32),
        encoders=("random_init",),
        landmarks=("nose", "left_eye"),
        preload=False,
    )
    experiment = LandmarkExperiment(config)
    _densities_that_depend_on_the_face(experiment)
    seen = []
    results = evaluate_calibration(
        experiment, levels=(0.5,), batch_size=3, progress=lambda *args: seen.append(args)
    )
    assert seen == [(0, 7), (3, 7), (6, 7), (7, 7)], "before each batch, then done"

    experiment.model.eval()
    estimators = experiment.pair_estimators.estimators
    encoder = experiment.model.transforms["random_init"]
    faces = experiment.source_images("test")
    expected: dict = {}
    with torch.no_grad():
        for index in range(7):
            item = faces[index]
            feature = encoder(item["image"][None])[0]  # [D], one face at a time
            height, width = item["image"].shape[-2:]
            grid = pixel_grid(height, width)
            for landmark in config.landmarks:
                truth = item[landmark]
                marginal = estimators[f"random_init;{landmark}"].q_Y
                conditional = estimators[f"random_init;{landmark}"].q_Y_given_X
                # one context per pixel: the plain path, no shortcut
                plain = conditional.condition(feature.expand(height, width, -1))
                for name, log_prob, at_truth in (
                    (None, marginal.log_prob(grid), marginal.log_prob(truth)),
                    (
                        "random_init",
                        plain.log_prob(grid),
                        conditional.condition(feature).log_prob(truth),
                    ),
                ):
                    scores = _plain_scores(log_prob, float(at_truth), truth)
                    expected.setdefault((name, landmark), []).append(scores)
    experiment.model.train()
    for result in results:
        rows = np.array(expected[(result.encoder, result.landmark)])  # [faces, 3]
        assert result.n == 7
        assert np.ptp(rows[:, 0]) > 0.1, "ranks that vary: else the test would prove little"
        # float32: a batch's convolutions and the shortcut add in other orders than one
        # image and the plain path, which moves a log-density by an ulp or a few (~1e-6 at
        # |log q| ~ 10; 6e-7 seen here, 7e-7 on 96 faces of the trained demo), and a rank
        # by about as much
        np.testing.assert_allclose(result.ranks, rows[:, 0], rtol=0, atol=1e-6)
        assert result.nll == pytest.approx(float(rows[:, 1].mean()), rel=1e-6)
        assert result.median_distance == float(np.median(rows[:, 2]))


def test_faces_of_other_sizes_go_to_separate_batches():
    from mist_core.experiment.faces import _source_batches

    sizes = [(20, 16), (20, 16), (24, 16), (20, 16), (20, 16)]
    faces = [
        {"image": torch.full((3, *size), float(k)), "nose": torch.tensor([k, k + 0.5])}
        for k, size in enumerate(sizes)
    ]
    batches = list(_source_batches(faces, 5, batch_size=4, landmarks=("nose",)))
    assert [tuple(images.shape) for images, _ in batches] == [
        (2, 3, 20, 16),
        (1, 3, 24, 16),
        (1, 3, 20, 16),  # the batch of 4 ends here
        (1, 3, 20, 16),
    ]
    order = [float(v) for images, _ in batches for v in images[:, 0, 0, 0]]
    assert order == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert torch.equal(batches[1][1]["nose"], torch.tensor([[2.0, 2.5]]))


def test_a_stop_during_the_calibration_ends_the_drawing_workers_at_once():
    """A job's stop raises from the progress callback: the faces being drawn ahead in worker
    processes (300 faces: workers) are not waited for, and the workers are gone."""
    import multiprocessing

    from mist_core.calibration import evaluate_calibration
    from mist_core.experiment import LandmarkExperiment, preset

    config = preset(
        "demo-cpu",
        train_size=4,
        test_size=300,
        image_size=(32, 32),
        encoders=("random_init",),
        landmarks=("nose",),
        preload=False,
    )
    experiment = LandmarkExperiment(config)
    earlier = set(multiprocessing.active_children())

    class Stopped(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done > 0:
            raise Stopped

    with pytest.raises(Stopped):
        evaluate_calibration(experiment, batch_size=8, progress=progress)
    assert set(multiprocessing.active_children()) <= earlier
    assert experiment.model.training


def test_a_preloaded_experiment_is_scored_from_its_stored_images_and_cached_features(
    monkeypatch,
):
    """With the images kept at the encoders' size and the frozen encoder's features cached,
    no face is drawn again; the ranks and NLLs are those of faces encoded at their own
    resolution but for the stored images' rounding to whole grey levels."""
    from mist_core.calibration import evaluate_calibration
    from mist_core.data.synthetic_faces import SyntheticFaces
    from mist_core.experiment import LandmarkExperiment, preset

    config = preset(
        "demo-cpu",
        train_size=10,
        test_size=6,
        valid_fraction=0.3,
        image_size=(32, 32),
        encoders=("random_init", "trained"),
        landmarks=("nose", "left_eye"),
    )
    stored = LandmarkExperiment(config)
    _densities_that_depend_on_the_face(stored)
    drawn = LandmarkExperiment(config.replace(preload=False))
    drawn.model.load_state_dict(stored.model.state_dict())
    stored.prepare(("train", "test"))

    def no_drawing(*args, **kwargs):
        raise AssertionError("a face was drawn again")

    monkeypatch.setattr(SyntheticFaces, "render_chunks", no_drawing)
    monkeypatch.setattr(SyntheticFaces, "__getitem__", no_drawing)
    for split, n in (("test", 6), ("valid", 3)):
        from_store = evaluate_calibration(stored, split, levels=(0.5,), batch_size=4)
        monkeypatch.undo()
        from_faces = evaluate_calibration(drawn, split, levels=(0.5,), batch_size=4)
        monkeypatch.setattr(SyntheticFaces, "render_chunks", no_drawing)
        monkeypatch.setattr(SyntheticFaces, "__getitem__", no_drawing)
        for a, b in zip(from_store, from_faces, strict=True):
            assert (a.encoder, a.landmark, a.n) == (b.encoder, b.landmark, n)
            np.testing.assert_allclose(a.ranks, b.ranks, rtol=0, atol=0.01)
            assert a.nll == pytest.approx(b.nll, rel=0.005)
            if a.encoder is None:  # the marginal needs no image
                assert a.ranks == pytest.approx(b.ranks, abs=1e-9)
    assert torch.is_grad_enabled() and stored.model.training
