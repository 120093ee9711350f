"""The stacked fast path of MultiMIEstimator gives the numbers of the plain per-head loop."""

from __future__ import annotations

import copy

import pytest
import torch

from mist_core import MultiMIEstimator
from mist_core.distributions import (
    ConditionalTransformedNormal,
    EMANorm,
    conditional_transformed_normal,
    transformed_normal,
)
from mist_core.estimators import DoE
from mist_core.estimators.stacked_layout import stackable
from mist_core.experiment import instantiate_estimators

REPRESENTATIONS = {"random_init": 12, "pretrained": 12, "finetuned": 12}
LANDMARKS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
#: the heads' standardisers: the seed's EMA ones, or none (a user's normalization=None)
NORMALIZATIONS = pytest.mark.parametrize("normalization", ["emanorm", None])


def _estimators(normalization="emanorm", hidden=(16, 8), marginal_hidden=(8,)):
    """The seed's heads (one q(y) per landmark shared by its heads), with ``normalization``."""
    if normalization == "emanorm":
        return instantiate_estimators(REPRESENTATIONS, LANDMARKS, hidden_dims=hidden,
                                      marginal_hidden_dims=marginal_hidden)  # fmt: skip
    # instantiate_estimators has no such option: the same heads, built as a user would
    estimators = {}
    for landmark in LANDMARKS:
        q_y = transformed_normal(2, hidden_dims=marginal_hidden, normalization=normalization)
        for name, dim in REPRESENTATIONS.items():
            q_y_x = conditional_transformed_normal(2, context_dim=dim, hidden_dims=hidden,
                                                   normalization=normalization)  # fmt: skip
            estimators[(name, landmark)] = DoE(q_Y_given_X=q_y_x, q_Y=q_y)
    return estimators


def _models(
    seed: int = 0, hidden=(16, 8), normalization="emanorm"
) -> tuple[MultiMIEstimator, MultiMIEstimator]:
    torch.manual_seed(seed)
    fast = MultiMIEstimator(_estimators(normalization, hidden))
    assert fast.stack_heads
    plain = copy.deepcopy(fast)
    plain.stack_heads = False
    return fast, plain


def _batch(n: int = 32, seed: int = 1, normalization="emanorm") -> dict[str, torch.Tensor]:
    """Raw units for standardised heads; about unit scale for heads without standardisers
    (as their users must feed them: raw pixels would blow their training up)."""
    g = torch.Generator().manual_seed(seed)
    if normalization is None:
        batch = {k: torch.randn(n, 12, generator=g) for k in REPRESENTATIONS}
        for k in LANDMARKS:
            batch[k] = 0.5 + 0.8 * batch["finetuned"][:, :2] + 0.6 * torch.randn(n, 2, generator=g)
        return batch
    batch = {k: torch.randn(n, 12, generator=g) * 3 + 1 for k in REPRESENTATIONS}
    batch["pretrained"] = batch["pretrained"] + 1000.0  # raw units far from zero
    for k in LANDMARKS:  # pixel units, dependent on the representations
        batch[k] = 80 + 10 * batch["finetuned"][:, :2] + torch.randn(n, 2, generator=g)
    return batch


def _stacked(terms) -> bool:
    """Whether these terms came from the fast path (its hand-written backward pass)."""
    return type(terms.loss.grad_fn).__name__ == "_StackedDoEBackward"


def _assert_same(a, b):
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-6, atol=1e-4)
    assert a.log_ratios.keys() == b.log_ratios.keys()
    for name in a.log_ratios:
        torch.testing.assert_close(a.log_ratios[name], b.log_ratios[name], rtol=0, atol=1e-5)


@NORMALIZATIONS
def test_fast_path_equals_plain_loop_through_training(normalization):
    """Ten SGD steps on each copy: same terms at every step, same weights and EMA buffers.

    (SGD, not Adam: Adam's first steps move every weight by +-lr whatever the size of its
    gradient, so a gradient of 1e-9 on one copy and -1e-9 on the other, float rounding,
    would end 2 lr apart. With SGD the copies agree to 1e-6.)"""
    fast, plain = _models(normalization=normalization)
    opt_fast = torch.optim.SGD(fast.parameters(), lr=1e-3)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-3)
    for step in range(10):
        batch = _batch(seed=step, normalization=normalization)
        terms_fast, terms_plain = fast.batch_terms(batch), plain.batch_terms(batch)
        assert _stacked(terms_fast) and not _stacked(terms_plain)
        _assert_same(terms_fast, terms_plain)
        for opt, terms in ((opt_fast, terms_fast), (opt_plain, terms_plain)):
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    fast.eval()
    plain.eval()
    batch = _batch(seed=99, normalization=normalization)
    _assert_same(fast.batch_terms(batch), plain.batch_terms(batch))


def test_ineligible_heads_use_the_plain_loop():
    torch.manual_seed(0)
    two_layers = MultiMIEstimator(
        instantiate_estimators(REPRESENTATIONS, LANDMARKS[:2], n_transforms=2)
    )
    assert not two_layers.stack_heads
    club = MultiMIEstimator(instantiate_estimators(REPRESENTATIONS, LANDMARKS[:2],
                                                   estimator="club"))  # fmt: skip
    assert not club.stack_heads


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


def _trained_pair(normalization="emanorm") -> tuple[MultiMIEstimator, MultiMIEstimator]:
    """Both copies after a few SGD steps: non-zero last layers and EMA statistics."""
    fast, plain = _models(normalization=normalization)
    for model in (fast, plain):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        for step in range(3):
            optimizer.zero_grad()
            model.batch_terms(_batch(seed=10 + step, normalization=normalization)).loss.backward()
            optimizer.step()
    return fast, plain


def _grads(model, batch, weights):
    """Gradients of loss + sum_k w_k mean(log_ratio_k) w.r.t. the parameters and the
    representations (as a trained encoder's features need them)."""
    batch = {k: v.clone().requires_grad_(k in REPRESENTATIONS) for k, v in batch.items()}
    model.zero_grad(set_to_none=True)
    terms = model.batch_terms(batch)
    assert _stacked(terms) == model.stack_heads
    objective = terms.loss + sum(w * terms.log_ratios[name].mean()
                                 for name, w in weights.items())  # fmt: skip
    objective.backward()
    params = {name: p.grad.clone() for name, p in model.named_parameters()}
    return params, {k: batch[k].grad.clone() for k in REPRESENTATIONS}


@NORMALIZATIONS
def test_hand_written_gradients_match_autograd_through_the_plain_loop(normalization):
    """The fast path's backward pass is written by hand: compare it with autograd's, for
    the loss and for objectives of the log-ratios, on parameters and representations."""
    fast, plain = _trained_pair(normalization)
    first = _batch(normalization=normalization)
    names = list(plain.batch_terms(first).log_ratios)
    assert list(fast.batch_terms(first).log_ratios) == names  # (both observe the batch)
    g = torch.Generator().manual_seed(3)
    for weights in ({}, {name: float(torch.randn((), generator=g)) for name in names}):
        batch = _batch(seed=42, normalization=normalization)
        fast_params, fast_x = _grads(fast, batch, weights)
        plain_params, plain_x = _grads(plain, batch, weights)
        assert fast_params.keys() == plain_params.keys()
        for name, grad in fast_params.items():
            torch.testing.assert_close(grad, plain_params[name], rtol=1e-4, atol=1e-6, msg=name)
        for key, grad in fast_x.items():
            assert grad.abs().max() > 0
            torch.testing.assert_close(grad, plain_x[key], rtol=1e-4, atol=1e-7, msg=key)


def test_targets_that_need_gradients_take_the_plain_loop():
    fast, plain = _trained_pair()
    batch = _batch(seed=7)
    for model in (fast, plain):
        model.zero_grad(set_to_none=True)
    grads = []
    for model in (fast, plain):
        leaf = {k: v.clone().requires_grad_(k in LANDMARKS) for k, v in batch.items()}
        model.batch_terms(leaf).loss.backward()
        grads.append(torch.cat([leaf[k].grad.flatten() for k in LANDMARKS]))
    assert not fast._stacked_heads.applies({k: v.requires_grad_(k in LANDMARKS)
                                    for k, v in batch.items()})  # fmt: skip
    torch.testing.assert_close(grads[0], grads[1])


@NORMALIZATIONS
def test_heads_share_the_stacked_storage_and_keep_their_state_dict(normalization):
    fast, plain = _trained_pair(normalization)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    torch.manual_seed(0)
    unwrapped = _estimators(normalization)
    # the per-head layout: the keys (and shapes) of the heads as built, nothing stacked
    heads = torch.nn.ModuleDict({f"{x};{y}": e for (x, y), e in unwrapped.items()})
    expected = {f"estimators.{k}": v.shape for k, v in heads.state_dict().items()}
    assert {k: v.shape for k, v in fast.state_dict().items()} == expected
    assert any("normalization" in k for k in expected) == (normalization is not None)
    stack = fast._stacked_heads
    head = fast.estimators["finetuned;nose"]
    weight = head.q_Y_given_X.flow.transform.transforms[-1].hyper[0].weight
    first_layers = stack.layers[0].param
    assert weight.data_ptr() in {first_layers[i].data_ptr() for i in range(len(first_layers))}
    # optimisers see one stacked parameter per kind of weight, not 8 a head and 4 a marginal
    names = [name for name, _ in fast.named_parameters()]
    assert names and all(name.startswith("stacked_parameters.") for name in names)
    assert len(names) == len(stack.params) == 12  # 3 layers x 2 + context path 2 + marginal 4
    distinct = {id(p): p for e in unwrapped.values() for p in e.parameters()}
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in distinct.values())
    fast.zero_grad(set_to_none=True)
    terms = fast.batch_terms(_batch(seed=1, normalization=normalization))
    assert _stacked(terms)
    terms.loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in fast.parameters())
    # a copy, a move to another dtype, a reload: each builds a new stack with the same numbers
    batch = _batch(seed=8, normalization=normalization)
    for model in (copy.deepcopy(fast), copy.deepcopy(fast).double()):
        model.eval()
        terms = model.batch_terms({k: v.to(next(model.parameters()).dtype)
                                   for k, v in batch.items()})  # fmt: skip
        assert _stacked(terms)
        heads = list(model.estimators.values())
        assert model._stacked_heads is not stack and model._stacked_heads.valid(heads)
        fast.eval()
        reference = fast.batch_terms(batch)
        torch.testing.assert_close(terms.loss.float(), reference.loss, rtol=1e-5, atol=1e-4)
        fast.train()
    reloaded = MultiMIEstimator(_estimators(normalization))
    reloaded.load_state_dict(fast.state_dict())
    reloaded.eval()
    fast.eval()
    batch = _batch(seed=9, normalization=normalization)
    terms = reloaded.batch_terms(batch)
    assert _stacked(terms)
    _assert_same(terms, fast.batch_terms(batch))


def test_adam_steps_give_the_parameters_of_the_plain_loop_without_standardisers():
    """Heads without standardisers: a few Adam steps (the trainer's optimiser) on each copy
    end at the same weights. Adam moves each weight by about lr whatever its gradient's
    size, so this also checks that no gradient of the plain loop gets a different sign.

    (Not with EMA standardisers: on a freshly standardised batch the marginals' last biases
    get gradients of ~1e-7, rounding residue whose sign differs between the two paths, and
    Adam turns that into 2 lr: see the SGD test above.)"""
    normalization = None
    fast, plain = _models(normalization=normalization)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (fast, plain)]
    for step in range(4):
        batch = _batch(seed=20 + step, normalization=normalization)
        terms = [m.batch_terms(batch) for m in (fast, plain)]
        assert [_stacked(t) for t in terms] == [True, False]
        for optimizer, term in zip(optimizers, terms, strict=True):
            optimizer.zero_grad()
            term.loss.backward()
            optimizer.step()
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_heads_without_standardisers_stack_unless_mixed_with_standardised_ones():
    """normalization=None everywhere stacks (an absent standardiser is the identity); so
    does a kind of standardiser absent in every head (here the contexts'), with the loop's
    numbers. Some heads standardised and some not: the plain loop."""
    torch.manual_seed(0)
    bare = _estimators(None)
    assert stackable(list(bare), list(bare.values()))
    mixed = dict(bare)
    q_y = mixed[("random_init", "nose")].q_Y
    mixed[("random_init", "nose")] = DoE(
        q_Y_given_X=conditional_transformed_normal(2, context_dim=12, hidden_dims=(16, 8)),
        q_Y=q_y,
    )  # one head with the default EMA standardisers among heads without any
    assert not stackable(list(mixed), list(mixed.values()))
    assert not MultiMIEstimator(mixed).stack_heads

    standardised = _estimators("emanorm")
    for head in standardised.values():  # keep the targets' standardisers, not the contexts'
        q = head.q_Y_given_X
        head.q_Y_given_X = ConditionalTransformedNormal(
            list(q.flow.transform.transforms)[1:], 2, 12, q.normalization, None
        )
    fast = MultiMIEstimator(standardised)
    assert fast.stack_heads
    plain = copy.deepcopy(fast)
    plain.stack_heads = False
    for seed in range(2):
        batch = _batch(seed=seed)
        batch.update({k: _batch(seed=seed, normalization=None)[k] for k in REPRESENTATIONS})
        terms = fast.batch_terms(batch)
        assert _stacked(terms)
        _assert_same(terms, plain.batch_terms(batch))


@pytest.mark.parametrize("hidden", [(16,), (16, 8, 8)])
def test_other_depths_match_the_plain_loop(hidden):
    """One hidden layer, or three, in the heads and two in the marginals: same numbers."""
    torch.manual_seed(0)
    fast = MultiMIEstimator(
        instantiate_estimators(REPRESENTATIONS, LANDMARKS, hidden_dims=hidden,
                               marginal_hidden_dims=(8, 4))
    )  # fmt: skip
    assert fast.stack_heads
    plain = copy.deepcopy(fast)
    plain.stack_heads = False
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-2) for m in (fast, plain)]
    for step in range(3):
        batch = _batch(seed=step)
        terms = [m.batch_terms(batch) for m in (fast, plain)]
        _assert_same(*terms)
        for optimizer, term in zip(optimizers, terms, strict=True):
            optimizer.zero_grad()
            term.loss.backward()
            optimizer.step()
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _linked(model: MultiMIEstimator) -> bool:
    """Whether every head's tensor is the view of its row of the stacked parameters."""
    weights = model.stacked_parameters
    rows = [row for param in weights.roles for row in param.data.unbind(0)]
    return all(
        module._buffers[name].data_ptr() == row.data_ptr()
        for (module, name), row in zip(weights.places(), rows, strict=True)
    )


def test_pickled_and_assign_loaded_models_use_their_own_values(tmp_path):
    """After torch.save/torch.load of the whole model, or load_state_dict(assign=True), the
    heads' tensors are no longer views of the stacked parameters: the next call takes
    their values into the stack and links them again."""
    fast, _ = _trained_pair()
    fast.eval()
    reference = fast.batch_terms(_batch(seed=4))
    torch.save(fast, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    _assert_same(loaded.batch_terms(_batch(seed=4)), reference)
    assert _linked(loaded)

    # assign=True replaces the heads' tensors by the given ones, here moved by +0.1
    state = {k: v.clone() + (0.1 if k.endswith("weight") else 0.0) if v.is_floating_point()
             else v.clone() for k, v in fast.state_dict().items()}  # fmt: skip
    fast.load_state_dict(state, assign=True)
    assert not _linked(fast)
    moved = fast.batch_terms(_batch(seed=4))
    assert _linked(fast)
    plain = copy.deepcopy(fast)
    plain.stack_heads = False
    _assert_same(moved, plain.batch_terms(_batch(seed=4)))
    assert not torch.allclose(moved.loss, reference.loss)
