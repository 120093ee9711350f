"""train_mi_estimator and estimate_mi: inputs, budgets, callbacks, cancellation, errors."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bench.accuracy.samplers import CorrelatedGaussian
from mist_core import (
    MIEstimator,
    MultiMIEstimator,
    Progress,
    build_estimator,
    estimate_mi,
    evaluate_mi,
    train_mi_estimator,
)
from mist_core.estimators import Terms


def _data(n: int = 512, mi: float = 1.0, seed: int = 0):
    return CorrelatedGaussian.with_mi(2, mi).sample(n, torch.Generator().manual_seed(seed))


def _doe():
    torch.manual_seed(0)
    return build_estimator("doe", 2, 2, hidden_dims=[16])


@pytest.mark.parametrize("form", ["tuple", "dict", "loader_of_dicts", "loader_of_tuples", "numpy"])
def test_accepts_every_data_form(form):
    x, y = _data()
    data = {
        "tuple": (x, y),
        "dict": {"x": x, "y": y},
        "loader_of_dicts": DataLoader(
            [{"x": a, "y": b} for a, b in zip(x, y, strict=True)], batch_size=32
        ),
        "loader_of_tuples": DataLoader(list(zip(x, y, strict=True)), batch_size=32),
        "numpy": (x.numpy(), y.numpy()),
    }[form]
    log = train_mi_estimator(_doe(), data, max_iterations=5, batch_size=32, device="cpu")
    assert list(log.columns) == ["step", "epoch", "split", "name", "value"]
    assert log.attrs["steps"] == 5
    assert set(log["name"]) == {"loss", "I(x;y)"}
    assert {"train", "valid"} == set(log["split"])


def test_epoch_and_iteration_budgets():
    x, y = _data(320)
    # 320 samples, 10% held out -> 288 train -> 9 batches of 32 per epoch
    log = train_mi_estimator(
        _doe(), (x, y), max_epochs=2, batch_size=32, device="cpu", early_stopping=False
    )
    assert log.attrs["steps"] == 18
    assert sorted(log.loc[log.split == "train", "epoch"].unique()) == [0, 1]
    log = train_mi_estimator(
        _doe(),
        (x, y),
        max_epochs=5,
        max_iterations=12,
        batch_size=32,
        device="cpu",
        early_stopping=False,
    )
    assert log.attrs["steps"] == 12


def test_callback_streams_progress_and_stop_event_cancels_within_a_step():
    x, y = _data(4096)
    stop = threading.Event()
    seen: list[Progress] = []

    def callback(progress: Progress) -> None:
        seen.append(progress)
        if progress.split == "train" and progress.step == 3:
            stop.set()

    log = train_mi_estimator(
        _doe(),
        (x, y),
        max_epochs=100,
        batch_size=64,
        device="cpu",
        callback=callback,
        stop_event=stop,
    )
    assert log.attrs["stopped"] is True
    assert log.attrs["steps"] == 3
    train = [p for p in seen if p.split == "train"]
    assert [p.step for p in train] == [1, 2, 3]
    assert train[-1].samples == 3 * 64
    assert set(train[0].mi) == {"I(x;y)"}
    assert train[0].total_steps == 100 * len(range(0, int(4096 * 0.9), 64))


def test_early_stopping_restores_the_best_validation_weights():
    x, y = _data(600)
    xv, yv = _data(600, seed=1)
    model = _doe()
    log = train_mi_estimator(
        model,
        (x, y),
        valid_data=(xv, yv),
        max_iterations=400,
        eval_every=10,
        patience=2,
        batch_size=32,
        lr=3e-2,
        device="cpu",
    )
    valid = log[(log.split == "valid") & (log.name == "loss")]
    best = valid.loc[valid.value.idxmin()]
    assert log.attrs["best_step"] == best.step
    model.eval()
    with torch.no_grad():
        loss = model.loss(xv, yv).item()
    assert loss == pytest.approx(best.value, abs=1e-4)


def test_multi_estimator_logs_every_pair():
    x, y = _data()
    z = torch.randn_like(x)
    multi = MultiMIEstimator(
        {
            ("a", "b"): build_estimator("doe", 2, 2, hidden_dims=[8]),
            ("c", "b"): build_estimator("doe", 2, 2, hidden_dims=[8]),
        }
    )
    log = train_mi_estimator(multi, {"a": x, "b": y, "c": z}, max_iterations=5, device="cpu")
    assert {"loss", "I(a;b)", "I(c;b)"} == set(log["name"])
    with pytest.raises(KeyError, match="no variable"):
        train_mi_estimator(multi, {"a": x, "b": y}, max_iterations=5, device="cpu")


class _Exploding(MIEstimator):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def terms(self, x, y):
        log_ratio = (x[:, 0] * self.w) / (self.w - 1.0)  # 0/0 -> NaN
        return Terms(loss=log_ratio.mean(), log_ratio=log_ratio)


def test_non_finite_loss_stops_with_the_step_and_pair():
    x, y = _data()
    with pytest.raises(FloatingPointError, match=r"step 0 \(non-finite estimates for I\(x;y\)\)"):
        train_mi_estimator(_Exploding(), (x, y), max_iterations=3, device="cpu")


def test_argument_errors():
    x, y = _data()
    with pytest.raises(ValueError, match="max_epochs or max_iterations"):
        train_mi_estimator(_doe(), (x, y))
    with pytest.raises(ValueError, match="train_data or data, not both"):
        train_mi_estimator(_doe(), (x, y), data=(x, y), max_iterations=1)
    with pytest.raises(ValueError, match="no training data"):
        train_mi_estimator(_doe(), max_iterations=1)
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'"):
        train_mi_estimator(_doe(), (x, y), max_iterations=1, optimizer="adamm")
    with pytest.raises(TypeError, match="DataLoader"):
        train_mi_estimator(_doe(), 42, max_iterations=1)
    with pytest.raises(ValueError, match="same number of samples"):
        train_mi_estimator(_doe(), (x, y[:-1]), max_iterations=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train_mi_estimator(_doe(), (x, y), max_iterations=1, device="cuda")


def test_estimate_mi_result_units_and_determinism():
    x, y = _data(4000, mi=1.0, seed=5)
    raw_x, raw_y = x.numpy() * 5 + 100, y.numpy() * 5 + 100
    a = estimate_mi(raw_x, raw_y, "doe", max_iterations=150, device="cpu")
    b = estimate_mi(raw_x, raw_y, "doe", max_iterations=150, device="cpu")
    assert a.mi == b.mi, "same seed, same estimate"
    assert a.estimator == "doe" and a.n_test == 2000 and a.n_train == 2000
    assert a.std_error > 0 and a.log.attrs["steps"] > 0
    assert a.mi == pytest.approx(1.0, abs=0.15)
    c = estimate_mi(x, y, "doe", max_iterations=150, device="cpu", seed=1)
    assert c.mi != a.mi


def test_estimate_mi_accepts_vectors_and_ba_entropy_in_raw_units():
    sampler = CorrelatedGaussian.with_mi(1, 0.5)
    x, y = sampler.sample(6000, torch.Generator().manual_seed(0))
    scale = 7.0  # H(7 Y) = H(Y) + log 7: estimate_mi must move it with the standardisation
    result = estimate_mi(
        x[:, 0],
        scale * y[:, 0],
        "ba",
        max_iterations=300,
        device="cpu",
        estimator_options={"entropy_y": sampler.entropy_y() + np.log(scale)},
    )
    assert result.mi == pytest.approx(0.5, abs=0.1)


def test_estimate_mi_argument_errors():
    x, y = _data(1000)
    with pytest.raises(ValueError, match="valid names"):
        estimate_mi(x, y, "mutual")
    with pytest.raises(ValueError, match="same number of samples"):
        estimate_mi(x, y[:10])
    with pytest.raises(ValueError, match="too few"):
        estimate_mi(x[:100], y[:100])
    with pytest.raises(ValueError, match="finite"):
        x_nan = x.clone()
        x_nan[0, 0] = float("nan")
        estimate_mi(x_nan, y)
    with pytest.raises(ValueError, match="unknown argument"):
        estimate_mi(x, y, "doe", estimator_options={"hiden": 3})


def test_evaluate_mi_single_pair_returns_a_float():
    x, y = _data()
    model = _doe()
    train_mi_estimator(model, (x, y), max_iterations=3, device="cpu")
    value = evaluate_mi(model, (x, y))
    assert isinstance(value, float)


@pytest.mark.parametrize("lr_schedule", ["constant", "one-cycle"])
def test_resume_mid_epoch_continues_exactly_where_it_stopped(lr_schedule):
    """Stop mid-epoch, checkpoint, resume into a fresh model: the same steps and weights as
    one uninterrupted run (the data order is fixed by seed and epoch; a schedule's learning
    rate by the step)."""
    from mist_core.training import ResumeFrom, TrainState

    x, y = _data(640)
    settings = dict(
        max_epochs=3,
        batch_size=32,
        device="cpu",
        seed=7,
        early_stopping=False,
        lr_schedule=lr_schedule,
    )

    reference = _doe()
    full = train_mi_estimator(reference, (x, y), **settings)

    saved: list[TrainState] = []
    snapshots: list[dict] = []
    stop = threading.Event()

    def on_checkpoint(state: TrainState) -> None:
        saved.append(state)
        snapshots.append(
            {
                "model": {k: v.clone() for k, v in state.estimator.state_dict().items()},
                "optim": copy.deepcopy(state.optimizer.state_dict()),
            }
        )

    def stop_at_step_25(progress: Progress) -> None:
        if progress.step == 25:
            stop.set()

    first = _doe()
    part1 = train_mi_estimator(
        first,
        (x, y),
        **settings,
        callback=stop_at_step_25,
        stop_event=stop,
        checkpoint=on_checkpoint,
    )
    assert part1.attrs["stopped"] and part1.attrs["steps"] == 25
    assert [s.reason for s in saved] == ["epoch", "stopped"]  # 18 steps per epoch
    last = saved[-1]
    assert (last.step, last.epoch, last.batches_in_epoch) == (25, 1, 7)

    second = _doe()
    second.load_state_dict(snapshots[-1]["model"])
    part2 = train_mi_estimator(
        second,
        (x, y),
        **settings,
        resume=ResumeFrom(last.step, last.epoch, last.batches_in_epoch, snapshots[-1]["optim"]),
    )
    assert part2.attrs["steps"] == full.attrs["steps"] == 54
    train_steps = lambda log: sorted(set(log.loc[log.split == "train", "step"]))  # noqa: E731
    assert train_steps(part1) + train_steps(part2) == train_steps(full)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_an_optimizer_state_of_another_layout_warns_and_training_goes_on():
    """A checkpoint saved before the heads' weights were stacked holds one Adam state per
    head tensor: resuming takes the weights and restarts the optimizer, with a warning."""
    from mist_core.training import ResumeFrom

    x, y = _data(256)
    other = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3)) for _ in range(5)])
    other.step()  # (no gradients: an empty but valid state)
    with pytest.warns(RuntimeWarning, match="fresh optimizer state"):
        log = train_mi_estimator(
            _doe(), (x, y), max_epochs=1, batch_size=64, device="cpu",
            resume=ResumeFrom(0, 0, 0, other.state_dict()),
        )  # fmt: skip
    assert log.attrs["steps"] == 4


def test_one_cycle_warms_up_then_cools_down_to_almost_nothing():
    """The learning rate of every optimizer step (read by a global step hook): from lr/25 up
    to lr at a quarter of the 54 steps, then down to ~0 at the last; constant by default."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    x, y = _data(640)
    settings = dict(max_epochs=3, batch_size=32, device="cpu", seed=7, lr=2e-3)
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"])
    )
    try:
        train_mi_estimator(_doe(), (x, y), **settings, lr_schedule="one-cycle")
        cycle, seen[:] = list(seen), []
        train_mi_estimator(_doe(), (x, y), **settings)
    finally:
        handle.remove()
    assert len(cycle) == 54 and seen == [2e-3] * 54
    top = int(np.argmax(cycle))
    assert top == round(0.25 * 53) and cycle[top] == pytest.approx(2e-3)
    assert cycle[0] == pytest.approx(2e-3 / 25)
    assert cycle[-1] < 1e-8
    assert all(a < b for a, b in zip(cycle[:top], cycle[1 : top + 1], strict=True))
    assert all(a > b for a, b in zip(cycle[top:-1], cycle[top + 1 :], strict=True))


def test_a_schedule_needs_a_known_length():
    x, y = _data(64)

    def batches():  # an iterable of unknown length
        yield {"x": x, "y": y}

    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        train_mi_estimator(_doe(), (x, y), max_epochs=1, lr_schedule="cosine")
    with pytest.raises(ValueError, match="needs to know the run's length"):
        train_mi_estimator(
            _doe(), batches(), max_epochs=1, lr_schedule="one-cycle", valid_percentage=0.0
        )
