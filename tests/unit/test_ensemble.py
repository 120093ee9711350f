"""``mist_core.training.ensemble.DensityEnsemble``: the deep ensemble of q(y|x) flows that
``estimate_mi``'s ``"auto"`` trains for its flow candidates with ``AutoConfig.ensemble > 1``,
and ``AutoConfig.average_weights``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mist_core.distributions import conditional_transformed_normal
from mist_core.training.auto import AutoConfig
from mist_core.training.candidates import Canonical, flow_densities
from mist_core.training.ensemble import DensityEnsemble


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Flows on small batches: more threads only add contention (as in test_auto)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _members(k: int, kind: str = "spline") -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        conditional_transformed_normal(
            2,
            3,
            hidden_dims=(16,),
            transform_name=f"conditional_{kind}_autoregressive",
            normalization=None,
            n_transforms=2,
        )
        for _ in range(k)
    ]


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_the_ensemble_is_the_equal_weight_mixture_of_its_members(kind):
    members = _members(3, kind)
    with torch.no_grad():  # start the members away from the identity, each its own way
        for member in members:
            for p in member.parameters():
                p.add_(0.3 * torch.randn_like(p))
    ensemble = DensityEnsemble(copy.deepcopy(members))
    y, x = torch.randn(50, 2), torch.randn(50, 3)
    each = torch.stack([m.log_prob(y, x) for m in members])  # [3, 50]
    assert each.std(0).min() > 1e-3  # the members differ
    ensemble.eval()
    torch.testing.assert_close(ensemble.member_log_probs(y, x), each)
    torch.testing.assert_close(ensemble.log_prob(y, x), each.logsumexp(0) - math.log(3))
    ensemble.train()  # training mode: each member's own likelihood, averaged
    torch.testing.assert_close(ensemble.log_prob(y, x), each.mean(0))


def test_each_member_is_trained_on_its_own_likelihood():
    """The gradient of a member's parameters comes from that member's log-likelihood only."""
    members = _members(2)
    ensemble = DensityEnsemble(copy.deepcopy(members))
    y, x = torch.randn(40, 2), torch.randn(40, 3)
    ensemble.train()
    ensemble.log_prob(y, x).mean().backward()
    first = members[0]
    first.log_prob(y, x).mean().backward()
    for stacked, own in zip(ensemble.stacked, first.parameters(), strict=True):
        torch.testing.assert_close(stacked.grad[0], own.grad / 2)
    assert sum(p.numel() for p in ensemble.parameters()) == 2 * sum(
        p.numel() for p in first.parameters()
    )


def test_one_member_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        DensityEnsemble(_members(1))


def test_auto_trains_an_ensemble_of_conditional_flows():
    """``flow_densities`` trains ``config.ensemble`` members of q(y|x), each its own fit, and
    its density is their mixture: held out, at least the members' mean likelihood."""
    torch.manual_seed(0)
    n = 3000
    x = torch.randn(n, 2)
    y = torch.stack([torch.sin(2 * x[:, 0]) * x[:, 1], x[:, 0] ** 2], 1) + 0.3 * torch.randn(n, 2)
    fit, valid = (x[:2000].double(), y[:2000].double()), (x[2000:].double(), y[2000:].double())
    config = AutoConfig(hidden_dims=(32, 32), max_epochs=30, max_seconds=600, ensemble=3)
    canon = Canonical(*fit)
    density = flow_densities("affine", canon, fit, valid, config, seed=0, parts=("conditional",))[
        "conditional"
    ]
    ensemble = density.module
    assert isinstance(ensemble, DensityEnsemble) and ensemble.size == 3
    with torch.no_grad():
        x_c, y_c = canon.x_coords(valid[0]), canon.y_coords(valid[1])
        r = canon.residual(x_c, y_c).float()
        each = ensemble.member_log_probs(r, x_c.float())  # [3, n_valid]
        mixture = float(density.log_prob(*valid).mean()) - canon.log_det_residual
    assert mixture >= float(each.mean()) - 1e-6
    assert float(each.mean(1).max() - each.mean(1).min()) > 1e-3  # three different fits


def test_averaged_weights_are_kept_where_they_validate_better():
    """A flow trained at a rate that makes its weights jump between noisy fits: with
    ``average_weights`` the kept state validates better than the best raw state (both run
    all 15 epochs: patience follows the raw weights, which the average does not change)."""
    torch.manual_seed(1)
    n = 1200
    x = torch.randn(n, 2)
    y = torch.stack([torch.tanh(2 * x[:, 0]), x[:, 1] * x[:, 0]], 1) + 0.5 * torch.randn(n, 2)
    fit, valid = (x[:800].double(), y[:800].double()), (x[800:].double(), y[800:].double())
    canon = Canonical(*fit)
    scores = {}
    for averaged in (False, True):
        config = AutoConfig(
            hidden_dims=(32, 32),
            lr=3e-2,
            batch_size=64,
            max_epochs=15,
            patience=15,
            max_seconds=600,
            ensemble=1,
            average_weights=averaged,
        )
        density = flow_densities(
            "affine", canon, fit, valid, config, seed=0, parts=("conditional",)
        )["conditional"]
        with torch.no_grad():
            scores[averaged] = float(density.log_prob(*valid).mean())
        assert density.epochs == 15
    assert scores[True] > scores[False]
