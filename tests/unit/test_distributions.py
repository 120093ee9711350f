"""Contract tests over every density: shapes, broadcasting, gradients, normalisation, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Distribution

from mist_core import conditional_transformed_normal, transformed_normal
from mist_core.distributions import CONDITIONAL_TRANSFORMS, TRANSFORMS, EMANorm

UNCONDITIONAL = sorted(TRANSFORMS)
CONDITIONAL = sorted(CONDITIONAL_TRANSFORMS)


def test_importing_mist_leaves_torch_validation_default_alone():
    # zuko switches argument validation off globally at import; mist puts it back.
    assert Distribution._validate_args == __debug__


@pytest.mark.parametrize("name", UNCONDITIONAL)
@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("n_transforms", [1, 2])
def test_unconditional_shapes_gradients_and_samples(name, dim, n_transforms):
    q = transformed_normal(dim, hidden_dims=[16], transform_name=name, n_transforms=n_transforms)
    y = torch.randn(7, 3, dim)
    log_prob = q.log_prob(y)
    assert log_prob.shape == (7, 3)
    assert torch.isfinite(log_prob).all()
    log_prob.mean().backward()
    for pname, p in q.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
    assert q.sample((4, 2)).shape == (4, 2, dim)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("dim", [1, 3])
def test_flows_start_at_the_identity(name, dim):
    """Untrained, standardised data: every flow (even zuko's 1-d element-wise layer) is the
    identity, so its log-density is the standard normal's; a random start was 0.7 nats off
    and a 1-d marginal had not recovered after 400 steps."""
    y = torch.randn(500, dim)
    q = transformed_normal(dim, hidden_dims=[16], transform_name=name, normalization=None)
    q_x = conditional_transformed_normal(
        dim, context_dim=4, hidden_dims=[16], transform_name=f"conditional_{name}",
        normalization=None,
    )  # fmt: skip
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(-1)
    if name != "spline_autoregressive":  # zero spline parameters are near, not at, identity
        torch.testing.assert_close(q.log_prob(y), expected)
        torch.testing.assert_close(q_x.condition(torch.randn(500, 4)).log_prob(y), expected)
    else:
        assert (q.log_prob(y) - expected).abs().mean() < 0.1


def test_linear_context_path_is_zero_for_old_checkpoints():
    """A state dict saved before the linear context path existed loads as that function."""
    torch.manual_seed(0)
    q = conditional_transformed_normal(2, context_dim=3, hidden_dims=[8]).eval()
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    old = {k: v for k, v in q.state_dict().items() if "context_weight" not in k}
    old = {k: v for k, v in old.items() if "context_bias" not in k}
    fresh = conditional_transformed_normal(2, context_dim=3, hidden_dims=[8]).eval()
    fresh.load_state_dict(old)
    with torch.no_grad():
        for name, p in q.named_parameters():
            if "context_" in name:
                p.zero_()
    torch.testing.assert_close(fresh.condition(x).log_prob(y), q.condition(x).log_prob(y))


@pytest.mark.parametrize("name", CONDITIONAL)
@pytest.mark.parametrize("n_transforms", [1, 2])
def test_conditional_shapes_gradients_and_samples(name, n_transforms):
    q = conditional_transformed_normal(
        2, context_dim=6, hidden_dims=[16, 8], transform_name=name, n_transforms=n_transforms
    )
    x, y = torch.randn(10, 6, requires_grad=True), torch.randn(10, 2)
    log_prob = q.condition(x).log_prob(y)
    assert log_prob.shape == (10,)
    log_prob.mean().backward()
    for pname, p in q.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
    # The flow starts at the identity, so the context matters from the first step on.
    torch.optim.SGD(q.parameters(), lr=0.1).step()
    x.grad = None
    q.condition(x).log_prob(y).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reaches the context"
    assert q.condition(x).sample((3,)).shape == (3, 10, 2)
    assert q.condition(x[0]).sample().shape == (2,)


@pytest.mark.parametrize("name", CONDITIONAL)
def test_seed_grid_broadcasting(name):
    """The seed evaluates a [1, 1, 512] context on a [178, 218, 2] pixel grid."""
    q = conditional_transformed_normal(2, 512, hidden_dims=[32, 16], transform_name=name).eval()
    xs, ys = torch.meshgrid(torch.arange(178.0), torch.arange(218.0), indexing="ij")
    grid = torch.stack([xs, ys], -1)
    context = torch.randn(1, 1, 512)
    log_prob = q.condition(context).log_prob(grid)
    assert log_prob.shape == (178, 218)
    # Each grid point scores as if evaluated on its own.
    single = q.condition(context[0, 0]).log_prob(grid[17, 42])
    torch.testing.assert_close(log_prob[17, 42], single, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CONDITIONAL)
def test_pairwise_broadcasting_matches_a_loop(name):
    q = conditional_transformed_normal(3, 4, hidden_dims=[16], transform_name=name)
    x, y = torch.randn(5, 4), torch.randn(6, 3)
    table = q.condition(x.unsqueeze(1)).log_prob(y.unsqueeze(0))
    assert table.shape == (5, 6)
    for a in range(5):
        torch.testing.assert_close(table[a], q.condition(x[a]).log_prob(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", UNCONDITIONAL)
def test_density_integrates_to_one_in_1d(name):
    torch.manual_seed(0)
    q = transformed_normal(1, hidden_dims=[8], transform_name=name)
    q.train()
    q.log_prob(torch.randn(256, 1) * 3.0 + 10.0)  # sets the standardiser from a batch
    q.eval()
    grid = torch.linspace(-30.0, 50.0, 40001).unsqueeze(-1)
    mass = torch.trapezoid(q.log_prob(grid).exp(), grid.squeeze(-1))
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_emanorm_first_batch_then_ema_then_frozen_in_eval():
    norm = EMANorm(2, momentum=0.5)
    first = torch.tensor([[100.0, -3.0], [110.0, -1.0]])
    norm.observe(first)
    torch.testing.assert_close(norm.mean, torch.tensor([105.0, -2.0]))
    torch.testing.assert_close(norm.std, torch.tensor([5.0, 1.0]))
    norm.observe(torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(norm.mean, torch.tensor([52.5, -1.0]))
    norm.eval()
    norm.observe(torch.randn(10, 2))
    torch.testing.assert_close(norm.mean, torch.tensor([52.5, -1.0]))
    assert {"mean", "std", "initialized"} <= set(norm.state_dict())
    assert not list(norm.parameters()), "statistics must be buffers, not parameters"


def test_emanorm_log_determinant_is_counted():
    """A diagonal flow on raw coordinates is exactly N(mean, std^2) after the first batch."""
    q = transformed_normal(2, transform_name="diagonal_affine")
    data = torch.randn(1000, 2) * torch.tensor([5.0, 2.0]) + torch.tensor([100.0, 50.0])
    q.train()
    q.log_prob(data)
    q.eval()
    mean, std = data.mean(0), data.std(0, unbiased=False)
    expected = torch.distributions.Normal(mean, std).log_prob(data).sum(-1)
    torch.testing.assert_close(q.log_prob(data), expected, rtol=1e-4, atol=1e-4)


def test_raw_pixel_coordinates_train_from_the_first_step():
    torch.manual_seed(0)
    q = transformed_normal(2, hidden_dims=[32])
    data = torch.randn(4096, 2) * 5.0 + torch.tensor([88.5, 134.5])
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    for step in range(150):
        batch = data[torch.randint(0, len(data), (128,))]
        loss = -q.log_prob(batch).mean()
        assert torch.isfinite(loss), f"non-finite loss at step {step}"
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    entropy = 0.5 * 2 * math.log(2 * math.pi * math.e * 25.0)
    assert -q.log_prob(data).mean().item() == pytest.approx(entropy, abs=0.05)


@pytest.mark.parametrize("name", CONDITIONAL)
def test_state_dict_reloads_into_a_fresh_model(name):
    torch.manual_seed(1)
    q = conditional_transformed_normal(2, 5, hidden_dims=[16], transform_name=name, n_transforms=2)
    q.train()
    q.condition(torch.randn(64, 5)).log_prob(torch.randn(64, 2) * 4 + 7)
    q.eval()
    fresh = conditional_transformed_normal(
        2, 5, hidden_dims=[16], transform_name=name, n_transforms=2
    )
    fresh.load_state_dict(q.state_dict())
    fresh.eval()
    x, y = torch.randn(9, 5), torch.randn(9, 2) * 4 + 7
    torch.testing.assert_close(fresh.condition(x).log_prob(y), q.condition(x).log_prob(y))


def test_bad_names_and_arguments_say_what_is_valid():
    with pytest.raises(ValueError, match="valid names: .*affine_autoregressive"):
        transformed_normal(2, transform_name="conditional_affine_autoregressive")
    with pytest.raises(ValueError, match="valid names: conditional_affine_autoregressive"):
        conditional_transformed_normal(2, 3, transform_name="affine")
    with pytest.raises(ValueError, match="unknown argument.*'hidden'.*valid arguments: input_dim"):
        transformed_normal(2, hidden=[3])
    with pytest.raises(ValueError, match="normalization"):
        transformed_normal(2, normalization="batchnorm")
    with pytest.raises(ValueError, match="n_transforms"):
        transformed_normal(2, n_transforms=0)
    with pytest.raises(ValueError, match="hidden_dims"):
        transformed_normal(2, hidden_dims=64)
    q = conditional_transformed_normal(2, 3)
    with pytest.raises(ValueError, match="conditioned on 3-d vectors"):
        q.condition(torch.randn(4, 5))
    with pytest.raises(ValueError, match="over 2-d vectors"):
        transformed_normal(2).log_prob(torch.randn(4, 3))


def test_a_constant_context_unit_does_not_blow_up_the_conditioner():
    """A random encoder's dead ReLU unit is 0 in training; a test image may light it up."""
    torch.manual_seed(0)
    q = conditional_transformed_normal(2, 4, hidden_dims=[16])
    context = torch.randn(256, 4)
    context[:, 3] = 0.0
    q.train()
    q.condition(context).log_prob(torch.randn(256, 2))
    q.eval()
    scale = q.context_normalization.scale()
    assert scale[3] >= 0.1 * q.context_normalization.std.mean()
    test_context = torch.randn(8, 4)
    test_context[:, 3] = 0.5
    z = q.context_normalization.standardize(test_context)
    assert z.abs().max() < 20


def test_emanorm_scale_floor_is_relative():
    norm = EMANorm(3, min_scale_ratio=0.1)
    norm.observe(torch.tensor([[0.0, 10.0, 5.0], [0.0, -10.0, -5.0]]))
    # mean std = 5: the constant unit is divided by 0.5, the others by their own std
    torch.testing.assert_close(norm.scale(), torch.tensor([0.5, 10.0, 5.0]), atol=1e-5, rtol=0)
