"""The stacked fast path of MultiMIEstimator gives the numbers of the plain per-head loop."""

from __future__ import annotations

import copy

import pytest
import torch

from mist_core import MultiMIEstimator
from mist_core.distributions import EMANorm
from mist_core.experiment import instantiate_estimators

REPRESENTATIONS = {"random_init": 12, "pretrained": 12, "finetuned": 12}
LANDMARKS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


def _models(seed: int = 0, hidden=(16, 8)) -> tuple[MultiMIEstimator, MultiMIEstimator]:
    torch.manual_seed(seed)
    fast = MultiMIEstimator(
        instantiate_estimators(REPRESENTATIONS, LANDMARKS, hidden_dims=hidden,
                               marginal_hidden_dims=(8,))
    )  # fmt: skip
    assert fast.stacked
    plain = copy.deepcopy(fast)
    plain.stacked = False
    return fast, plain


def _batch(n: int = 32, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {k: torch.randn(n, 12, generator=g) * 3 + 1 for k in REPRESENTATIONS}
    batch["pretrained"] = batch["pretrained"] + 1000.0  # raw units far from zero
    for k in LANDMARKS:  # pixel units, dependent on the representations
        batch[k] = 80 + 10 * batch["finetuned"][:, :2] + torch.randn(n, 2, generator=g)
    return batch


def _assert_same(a, b):
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-6, atol=1e-4)
    assert a.log_ratios.keys() == b.log_ratios.keys()
    for name in a.log_ratios:
        torch.testing.assert_close(a.log_ratios[name], b.log_ratios[name], rtol=0, atol=1e-5)


def test_fast_path_equals_plain_loop_through_training():
    """Ten SGD steps on each copy: same terms at every step, same weights and EMA buffers.

    (SGD, not Adam: Adam's first steps move every weight by +-lr whatever the size of its
    gradient, so a gradient of 1e-9 on one copy and -1e-9 on the other, float rounding,
    would end 2 lr apart. With SGD the copies agree to 1e-6.)"""
    fast, plain = _models()
    opt_fast = torch.optim.SGD(fast.parameters(), lr=1e-3)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-3)
    for step in range(10):
        batch = _batch(seed=step)
        terms_fast, terms_plain = fast.batch_terms(batch), plain.batch_terms(batch)
        _assert_same(terms_fast, terms_plain)
        for opt, terms in ((opt_fast, terms_fast), (opt_plain, terms_plain)):
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    fast.eval()
    plain.eval()
    _assert_same(fast.batch_terms(_batch(seed=99)), plain.batch_terms(_batch(seed=99)))


def test_ineligible_heads_use_the_plain_loop():
    torch.manual_seed(0)
    two_layers = MultiMIEstimator(
        instantiate_estimators(REPRESENTATIONS, LANDMARKS[:2], n_transforms=2)
    )
    assert not two_layers.stacked
    club = MultiMIEstimator(instantiate_estimators(REPRESENTATIONS, LANDMARKS[:2],
                                                   estimator="club"))  # fmt: skip
    assert not club.stacked


def test_a_shared_density_observes_each_batch_once():
    """Three heads share a marginal: its running mean moves as if it saw the batch once."""
    norm = EMANorm(2, momentum=0.5)
    first, second = torch.zeros(8, 2), torch.ones(8, 2) * 4
    norm.observe(first)
    for _ in range(3):
        norm.observe(second)  # the same tensor three times: one update
    assert norm.mean.tolist() == pytest.approx([2.0, 2.0])
    norm.observe(second.clone())  # a new batch (even with equal values) counts
    assert norm.mean.tolist() == pytest.approx([3.0, 3.0])


def test_heads_with_different_context_statistics_standardise_on_their_own():
    """Heads of one representation loaded from different runs hold different running
    statistics; the fast path standardises per head and still matches the loop."""
    fast, plain = _models()
    for model in (fast, plain):
        model.train()
        model.batch_terms(_batch(seed=0))  # initialise every standardiser
        head = model.estimators["pretrained;nose"]
        with torch.no_grad():
            head.q_Y_given_X.context_normalization.mean.add_(0.5)
            head.q_Y_given_X.context_normalization.std.mul_(1.7)
            for p in model.parameters():
                p.add_(
                    0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
                )
        model.eval()
    _assert_same(fast.batch_terms(_batch(seed=5)), plain.batch_terms(_batch(seed=5)))
