"""Posterior maps: pixel alignment, HPD regions, pointwise MI, against direct evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mist_core.experiment import LandmarkExperiment, preset
from mist_core.posterior import hpd_thresholds, pixel_grid, posterior_maps


def test_pixel_grid_is_pixel_centres_x_right_y_down():
    grid = pixel_grid(4, 3)
    assert grid.shape == (4, 3, 2)
    assert grid[0, 0].tolist() == [0.5, 0.5]
    assert grid[3, 1].tolist() == [1.5, 3.5]  # row 3, column 1 -> x = 1.5, y = 3.5


def test_hpd_thresholds_hold_their_mass():
    rng = np.random.default_rng(0)
    log_prob = rng.normal(size=(40, 30)) * 3
    probs = np.exp(log_prob) / np.exp(log_prob).sum()
    for mass, threshold in hpd_thresholds(log_prob, (0.5, 0.9)).items():
        inside = probs[log_prob >= threshold].sum()
        assert mass <= inside < mass + probs.max() + 1e-9
    with pytest.raises(ValueError, match="credible masses"):
        hpd_thresholds(log_prob, (1.5,))


def test_a_gaussian_density_peaks_at_its_mean_pixel():
    ys, xs = np.mgrid[0:50, 0:40] + 0.5
    log_prob = -((xs - 12.5) ** 2 + (ys - 30.5) ** 2) / 8.0
    levels = hpd_thresholds(log_prob, (0.5,))
    assert log_prob[30, 12] >= levels[0.5]  # the peak pixel is inside the 50% region


@pytest.fixture(scope="module")
def experiment():
    exp = LandmarkExperiment(
        preset(
            "demo-cpu",
            train_size=32,
            test_size=8,
            image_size=(40, 32),
            batch_size=16,
            epochs=1,
            encoders=("random_init", "trained"),
            landmarks=("nose",),
            valid_fraction=0.0,
        )
    )
    exp.train()
    return exp


def test_posterior_maps_match_direct_evaluation(experiment):
    from mist_core.data import SyntheticFaces

    face = SyntheticFaces(1, seed=5)[0]
    maps = posterior_maps(experiment, face["image"], "nose", truth=face["nose"])
    assert [m.encoder for m in maps] == [None, "random_init", "trained"]
    for m in maps:
        assert m.log_prob.shape == (218, 178)
        assert np.isfinite(m.log_prob).all()
        assert m.levels[0.5] > m.levels[0.9]
        assert 0 < m.mass_in_image <= 1.0 + 1e-3
    marginal, _, trained = maps
    assert marginal.pointwise_mi is None and marginal.log_prob_at_truth is not None
    # direct: the seed's way, on the representation of the same image
    experiment.model.eval()
    with torch.no_grad():
        z = experiment.model.transform(image=face["image"].unsqueeze(0))["trained"][0]
        est = experiment.pair_estimators.estimators["trained;nose"]
        direct_grid = est.q_Y_given_X.condition(z).log_prob(pixel_grid(218, 178))
        direct_mi = est.log_ratio(z.unsqueeze(0), face["nose"].unsqueeze(0))[0]
    np.testing.assert_allclose(trained.log_prob, direct_grid.numpy(), rtol=1e-5, atol=1e-4)
    assert trained.pointwise_mi == pytest.approx(float(direct_mi), abs=1e-4)
    i, j = 100, 60
    with torch.no_grad():
        at_pixel = est.q_Y_given_X.condition(z).log_prob(torch.tensor([j + 0.5, i + 0.5]))
    assert trained.log_prob[i, j] == pytest.approx(float(at_pixel), abs=1e-4)


def test_posterior_argument_errors(experiment):
    image = torch.rand(3, 20, 16)
    with pytest.raises(ValueError, match="landmark 'chin'"):
        posterior_maps(experiment, image, "chin")
    with pytest.raises(ValueError, match="unknown encoder"):
        posterior_maps(experiment, image, "nose", encoders=["vgg"])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        posterior_maps(experiment, torch.rand(20, 16), "nose")


@pytest.mark.parametrize("transform", ["affine_autoregressive", "spline_autoregressive"])
def test_one_context_for_a_grid_gives_the_same_log_prob_as_one_context_per_point(transform):
    """The posterior-map shortcut (context part of the first layer computed once) changes
    nothing but the speed."""
    from mist_core.distributions import conditional_transformed_normal

    torch.manual_seed(0)
    q = conditional_transformed_normal(
        2,
        context_dim=32,
        hidden_dims=[16, 8],
        transform_name=f"conditional_{transform}",
        n_transforms=2,
    )
    q.eval()
    for parameter in q.parameters():  # move away from the identity start
        parameter.data.add_(0.3 * torch.randn_like(parameter))
    context = torch.randn(32)
    grid = torch.rand(7, 5, 2) * 4 - 2
    fast = q.condition(context).log_prob(grid)
    plain = q.condition(context.expand(7, 5, 32)).log_prob(grid)
    assert fast.shape == (7, 5)
    # float32: the shortcut adds in another order, and a spline magnifies the rounding
    # (5e-5 seen on values near 3); in float64 the two agree to 1e-12
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fast, q.condition(-context).log_prob(grid))  # context matters
    q64 = q.double()  # (in place)
    torch.testing.assert_close(
        q64.condition(context.double()).log_prob(grid.double()),
        q64.condition(context.double().expand(7, 5, 32)).log_prob(grid.double()),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("n_transforms", [1, 2])
@pytest.mark.parametrize("transform", ["affine_autoregressive", "spline_autoregressive"])
def test_a_batch_of_contexts_over_one_grid_gives_each_context_s_log_prob(transform, n_transforms):
    """Contexts ``[B, 1, 1, C]`` against one grid ``[H, W, 2]`` (the calibration's batches):
    each context's map, as with one context per point. On a pixel grid the conditioner of
    the first layer runs once per column (it reads only x), and the grid is standardised
    once for the batch."""
    from mist_core.distributions import conditional_transformed_normal
    from mist_core.posterior import pixel_grid

    torch.manual_seed(0)
    q = conditional_transformed_normal(
        2,
        context_dim=32,
        hidden_dims=[16, 8],
        transform_name=f"conditional_{transform}",
        n_transforms=n_transforms,
    )
    q.eval()
    for parameter in q.parameters():  # move away from the identity start
        parameter.data.add_(0.3 * torch.randn_like(parameter))
    q.normalization.mean.copy_(torch.tensor([8.0, 10.0]))
    q.normalization.std.copy_(torch.tensor([4.0, 5.0]))
    contexts = torch.randn(4, 32)
    for grid in (pixel_grid(20, 16), torch.rand(7, 5, 2) * 16):
        batch = q.condition(contexts[:, None, None, :]).log_prob(grid)
        assert batch.shape == (4, *grid.shape[:-1])
        for context, fast in zip(contexts, batch, strict=True):
            plain = q.condition(context.expand(*grid.shape[:-1], 32)).log_prob(grid)
            # float32, added in another order (see the test above)
            torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    q64 = q.double()
    grid = pixel_grid(20, 16).double()
    torch.testing.assert_close(
        q64.condition(contexts.double()[:, None, None, :]).log_prob(grid),
        torch.stack(
            [q64.condition(c.expand(20, 16, 32)).log_prob(grid) for c in contexts.double()]
        ),
        rtol=1e-10,
        atol=1e-10,
    )


def test_the_standard_normal_base_scores_as_torch_s_normal_bit_for_bit():
    """flows' base N(0, I) leaves the zero mean and unit scale out of log_prob (and sums a
    last dimension of 2 as one addition): torch's numbers, bit for bit, and its samples."""
    from torch.distributions import Independent, Normal

    from mist_core.distributions.flows import StandardNormal

    for features, batch, points in (
        (2, (), (500, 2)),
        (2, (3, 1, 1), (3, 6, 5, 2)),
        (3, (4,), (3,)),
    ):
        base = StandardNormal(features)().expand(torch.Size(batch))
        torch_normal = Independent(Normal(torch.zeros(features), torch.ones(features)), 1)
        torch_normal = torch_normal.expand(torch.Size(batch))
        value = torch.randn(points) * 10
        assert torch.equal(base.log_prob(value), torch_normal.log_prob(value))
        torch.manual_seed(1)
        drawn = base.sample((2,))
        torch.manual_seed(1)
        assert torch.equal(drawn, torch_normal.sample((2,)))
