"""The seed notebook's API, run against mist_core with only the imports changed.

The notebook's encoders are ResNet18s on CelebA; here a small conv net with BatchNorm on
random "images" plays their part, so the contract (names, shapes, infomax flags, freezing,
evaluation) is checked in seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mist_core import (
    DoE,
    MultiMIEstimator,
    TransformedMIEstimator,
    conditional_transformed_normal,
    evaluate_mi,
    freeze,
    train_mi_estimator,
    transformed_normal,
)

LANDMARKS = ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]
REPRESENTATIONS = ["random_init", "pretrained", "finetuned"]
Z = 16


class TinyEncoder(nn.Module):
    """[B, 3, H, W] -> [B, Z], with BatchNorm so that freezing has something to protect."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, Z),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FakeFaces(Dataset):
    """Items in the seed's form: an image [3, 24, 20] and five landmarks [2] (x, y) in pixels."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 24, 20, generator=g)
        brightness = self.images.mean(dim=(1, 2, 3))
        self.landmarks = {
            name: torch.stack(
                [
                    80 + 40 * brightness + torch.randn(n, generator=g),
                    110 + 5 * torch.randn(n, generator=g),
                ],
                -1,
            )
            for name in LANDMARKS
        }

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], **{k: v[i] for k, v in self.landmarks.items()}}


def instantiate_estimators() -> dict[tuple[str, str], DoE]:
    """As the seed's helper: one DoE per (representation, landmark), q(landmark) shared."""
    estimators = {}
    for landmark in LANDMARKS:
        q_y = transformed_normal(2, hidden_dims=[16])
        for representation in REPRESENTATIONS:
            q_y_given_x = conditional_transformed_normal(2, context_dim=Z, hidden_dims=[32, 16])
            estimators[(representation, landmark)] = DoE(q_Y_given_X=q_y_given_x, q_Y=q_y)
    return estimators


@pytest.fixture()
def seed_model():
    torch.manual_seed(0)
    encoders = {
        "random_init": freeze(TinyEncoder()),
        "pretrained": freeze(TinyEncoder()),
        "finetuned": TinyEncoder(),
    }
    multi = MultiMIEstimator(instantiate_estimators())
    model = TransformedMIEstimator(
        transforms_rename={("image", name): enc for name, enc in encoders.items()},
        base_estimator=multi,
    )
    return model, encoders


def test_infomax_gradient_matches_the_seed(seed_model):
    model, _ = seed_model
    assert list(model.base_estimator.infomax_gradient.items()) == [
        ("random_init", True),
        ("left_eye", False),
        ("pretrained", True),
        ("finetuned", True),
        ("right_eye", False),
        ("nose", False),
        ("left_mouth", False),
        ("right_mouth", False),
    ]


def test_estimator_keys_and_attributes(seed_model):
    model, _ = seed_model
    estimators = model.base_estimator.estimators
    assert list(estimators)[:3] == [
        "random_init;left_eye",
        "pretrained;left_eye",
        "finetuned;left_eye",
    ]
    assert len(estimators) == 15
    doe = estimators["random_init;nose"]
    assert doe.q_Y is estimators["finetuned;nose"].q_Y, "q(landmark) is shared across encoders"
    assert doe.q_Y_given_X is not estimators["finetuned;nose"].q_Y_given_X


def test_transform_adds_the_representations(seed_model):
    model, _ = seed_model
    batch = next(iter(DataLoader(FakeFaces(8), batch_size=8)))
    out = model.transform(**batch)
    assert set(out) == set(batch) | set(REPRESENTATIONS)
    assert all(out[name].shape == (8, Z) for name in REPRESENTATIONS)
    assert out["image"] is batch["image"]


def test_seed_notebook_flow_end_to_end(seed_model):
    model, encoders = seed_model
    data = FakeFaces(96)
    trainloader = DataLoader(data, batch_size=32)
    testloader = DataLoader(torch.utils.data.Subset(data, range(64)), batch_size=32)

    frozen_before = {
        n: {k: v.clone() for k, v in encoders[n].state_dict().items()}
        for n in ("random_init", "pretrained")
    }
    finetuned_before = {k: v.clone() for k, v in encoders["finetuned"].state_dict().items()}
    probe = data[0]["image"].unsqueeze(0)
    frozen_outputs = {n: encoders[n](probe) for n in ("random_init", "pretrained")}

    log = train_mi_estimator(
        estimator=model, data=trainloader, max_epochs=2, verbose=False, device="cpu"
    )
    assert list(log.columns) == ["step", "epoch", "split", "name", "value"]
    assert "I(finetuned;nose)" in set(log["name"])

    # freeze: parameters, BatchNorm statistics and outputs unchanged by training...
    for name, before in frozen_before.items():
        for key, value in encoders[name].state_dict().items():
            assert torch.equal(value, before[key]), f"{name}.{key} changed during training"
        assert torch.equal(encoders[name](probe), frozen_outputs[name])
        assert not encoders[name].training
    # ...while the fine-tuned encoder learns from the MI objective.
    changed = [
        k
        for k, v in encoders["finetuned"].state_dict().items()
        if not torch.equal(v, finetuned_before[k])
    ]
    assert any(k.endswith("weight") for k in changed)

    model.eval()
    mutual_information = evaluate_mi(model, data=testloader)
    expected = [f"I({r};{lm})" for lm in LANDMARKS for r in REPRESENTATIONS]
    assert list(mutual_information) == expected
    assert all(isinstance(v, float) for v in mutual_information.values())

    values, errors = evaluate_mi(model, data=testloader, return_std_error=True)
    assert values == pytest.approx(mutual_information)
    assert all(e > 0 for e in errors.values())

    # The posterior grid of the seed's last cell.
    item = {k: v.unsqueeze(0) for k, v in data[0].items()}
    encoded = model.transform(**item)
    xs, ys = torch.meshgrid(torch.arange(1.0, 179.0), torch.arange(1.0, 219.0), indexing="ij")
    grid = torch.cat([xs.unsqueeze(-1), ys.unsqueeze(-1)], -1)
    q_y = model.base_estimator.estimators["random_init;nose"].q_Y.log_prob(grid)
    assert q_y.shape == (178, 218)
    representation = encoded["finetuned"].unsqueeze(0)
    q_y_x = model.base_estimator.estimators["finetuned;nose"].q_Y_given_X.condition(representation)
    assert q_y_x.log_prob(grid).shape == (178, 218)


def test_freeze_survives_a_parent_train_call():
    enc = freeze(TinyEncoder())
    parent = nn.ModuleDict({"enc": enc, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    stats = enc.net[1].running_mean.clone()
    enc(torch.rand(4, 3, 10, 10) * 10)
    assert torch.equal(stats, enc.net[1].running_mean)


def test_frozen_encoders_run_without_autograd(seed_model):
    model, _ = seed_model
    batch = next(iter(DataLoader(FakeFaces(4), batch_size=4)))
    out = model.transform(**batch)
    assert not out["random_init"].requires_grad
    assert out["finetuned"].requires_grad


class _ModeProbe(nn.Module):
    """Records the module mode and autograd state it was called under."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.lin(x)


@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_evaluate_mi_runs_in_eval_without_grad_and_restores_mode(start_in_train_mode):
    probe = _ModeProbe()
    doe = DoE(conditional_transformed_normal(2, 2, hidden_dims=[8]), transformed_normal(2))
    model = TransformedMIEstimator(transforms={"x": probe}, base_estimator=doe)
    model.train(start_in_train_mode)
    x, y = torch.randn(30, 2), torch.randn(30, 2)
    evaluate_mi(model, data=(x, y), batch_size=7)
    assert probe.calls and all(call == (False, False) for call in probe.calls)
    assert model.training == start_in_train_mode
    assert probe.training == start_in_train_mode


def test_evaluate_mi_weights_batches_by_samples():
    torch.manual_seed(0)
    doe = DoE(conditional_transformed_normal(2, 3, hidden_dims=[8]), transformed_normal(2)).eval()
    x, y = torch.randn(30, 3), torch.randn(30, 2)
    expected = doe.log_ratio(x, y).mean().item()
    # batches of 7, 7, 7, 7, 2: an unweighted mean of batch means would differ
    value, error = evaluate_mi(doe, data=(x, y), batch_size=7, return_std_error=True)
    assert value == pytest.approx(expected, abs=1e-5)
    assert error == pytest.approx(doe.log_ratio(x, y).std().item() / 30**0.5, rel=1e-3)
    # shuffling the evaluation loader changes nothing
    loader = DataLoader(list(zip(x, y, strict=True)), batch_size=7, shuffle=True)
    assert evaluate_mi(doe, data=loader) == pytest.approx(expected, abs=1e-5)


def test_the_seed_helpers_exist_with_the_notebooks_output():
    from mist_core import LANDMARKS as SEED_LANDMARKS
    from mist_core import REPRESENTATIONS as SEED_REPRESENTATIONS
    from mist_core import instantiate_estimators as seed_instantiate

    assert list(SEED_LANDMARKS) == LANDMARKS
    assert list(SEED_REPRESENTATIONS) == REPRESENTATIONS
    estimators = seed_instantiate()
    assert [(r, lm, type(e).__name__) for (r, lm), e in estimators.items()] == [
        (r, lm, "DoE") for lm in LANDMARKS for r in REPRESENTATIONS
    ]
    multi = MultiMIEstimator(estimators)
    assert multi.infomax_gradient == {
        "random_init": True,
        "left_eye": False,
        "pretrained": True,
        "finetuned": True,
        "right_eye": False,
        "nose": False,
        "left_mouth": False,
        "right_mouth": False,
    }
    assert list(multi.infomax_gradient)[:3] == ["random_init", "left_eye", "pretrained"]
