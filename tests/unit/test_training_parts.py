"""The training loop's small pieces: budget, position, early stopping, log, checkpoints,
cancellation, progress; and that the loop takes its per-batch terms from distributed."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from mist_core import build_estimator, distributed, train_mi_estimator
from mist_core.training import Progress, ResumeFrom, TrainState
from mist_core.training.parts import (
    LOG_COLUMNS,
    Budget,
    Cancellation,
    CheckpointSchedule,
    EarlyStopping,
    MetricLog,
    Position,
    ProgressReport,
)


@pytest.mark.parametrize(
    ("max_epochs", "max_iterations", "steps_per_epoch", "eval_every", "total", "every"),
    [
        (2, None, 9, None, 18, None),  # epochs only: validate once per epoch
        (5, 12, 9, None, 12, 1),  # the iteration budget ends first; 10 validations over it
        (None, 100, None, None, 100, 10),
        (3, None, None, None, None, None),  # a loader without a length: total unknown
        (None, 50, 9, 7, 50, 7),  # an explicit eval_every is kept
        (1, 1000, 30, None, 30, 3),  # the epochs end first: 10 validations over 30 steps
    ],
)
def test_budget_plan(max_epochs, max_iterations, steps_per_epoch, eval_every, total, every):
    budget = Budget.plan(max_epochs, max_iterations, steps_per_epoch, eval_every)
    assert (budget.total, budget.eval_every) == (total, every)
    assert budget.validates_per_epoch is (every is None)


def test_budget_limits_and_validation_steps():
    budget = Budget(max_epochs=2, max_iterations=10, total=10, eval_every=4)
    assert budget.allows_epoch(0, 0) and budget.allows_epoch(9, 1)
    assert not budget.allows_epoch(10, 1) and not budget.allows_epoch(3, 2)
    assert not budget.iterations_spent(9) and budget.iterations_spent(10)
    assert [s for s in range(1, 13) if budget.validates_after_step(s)] == [4, 8, 12]
    assert not Budget(None, None, None, None).iterations_spent(10**9)
    assert Budget.steps_per_epoch([1, 2, 3]) == 3
    assert Budget.steps_per_epoch(iter([1, 2, 3])) is None


def test_position_counts_steps_epochs_and_samples():
    at = Position.resume(ResumeFrom(step=25, epoch=1, batches_in_epoch=7))
    assert (at.step, at.epoch, at.batches_in_epoch, at.samples) == (25, 1, 7, 0)
    at.advance(32)
    at.advance(30)
    assert (at.step, at.batches_in_epoch, at.samples) == (27, 9, 62)
    at.end_epoch()
    assert (at.epoch, at.batches_in_epoch) == (2, 0)
    with pytest.raises(ValueError, match="yielded no batches"):
        at.end_epoch()
    assert Position.resume(None) == Position()


def _linear(value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(value)
    return layer


def test_early_stopping_waits_for_patience_and_restores_the_best_weights():
    stopping = EarlyStopping(patience=2)
    model = _linear(1.0)
    assert not stopping.update(3.0, step=10, model=model)
    model.weight.data.fill_(2.0)
    assert not stopping.update(2.0, step=20, model=model)  # better: the weights are kept
    model.weight.data.fill_(3.0)
    assert not stopping.update(2.5, step=30, model=model)  # worse once
    assert not stopping.update(1.5, step=40, model=model)  # better again: the count restarts
    model.weight.data.fill_(4.0)
    assert not stopping.update(1.5, step=50, model=model)  # equal is not better
    assert stopping.update(float("nan"), step=60, model=model)  # NaN is no improvement
    assert (stopping.best_loss, stopping.best_step) == (1.5, 40)
    assert stopping.restore(model)
    assert model.weight.item() == 3.0


def test_early_stopping_disabled_tracks_the_best_step_but_never_stops():
    stopping = EarlyStopping(patience=1, enabled=False)
    model = _linear(1.0)
    assert not stopping.update(1.0, step=5, model=model)
    assert not any(stopping.update(2.0, step=s, model=model) for s in (6, 7, 8))
    assert stopping.best_step == 5
    model.weight.data.fill_(9.0)
    assert not stopping.restore(model)
    assert model.weight.item() == 9.0


def test_early_stopping_keeps_a_copy_not_a_view_of_the_weights():
    stopping = EarlyStopping(patience=3)
    model = _linear(1.0)
    stopping.update(1.0, step=1, model=model)
    with torch.no_grad():
        model.weight.add_(5.0)  # an optimizer step updates the parameters in place
    stopping.restore(model)
    assert model.weight.item() == 1.0


def test_metric_log_rows_frame_and_attrs():
    log = MetricLog()
    assert log.last_split is None
    empty = log.frame(steps=0)
    assert list(empty.columns) == list(LOG_COLUMNS) and len(empty) == 0
    log.add(1, 0, "train", {"loss": 2.0, "I(x;y)": 0.5})
    log.add(1, 0, "valid", {"loss": 1.5, "I(a;b)": 0.25, "I(c;b)": 0.75})
    assert log.last_split == "valid"
    frame = log.frame(stopped=False, best_step=1)
    assert list(frame.columns) == ["step", "epoch", "split", "name", "value"]
    assert frame.values.tolist() == [
        [1, 0, "train", "loss", 2.0],
        [1, 0, "train", "I(x;y)", 0.5],
        [1, 0, "valid", "loss", 1.5],
        [1, 0, "valid", "I(a;b)", 0.25],
        [1, 0, "valid", "I(c;b)", 0.75],
    ]
    assert frame.attrs == {"stopped": False, "best_step": 1}


def _state(step: int, reason: str) -> TrainState:
    model = _linear(0.0)
    return TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), step, 0, step, reason)


def test_checkpoint_schedule_saves_once_per_step():
    saved: list[tuple[int, str]] = []
    schedule = CheckpointSchedule(lambda state: saved.append((state.step, state.reason)))
    assert schedule.save(_state(9, "epoch"))
    assert not schedule.save(_state(9, "early_stopped"))  # the epoch's save covers it
    assert schedule.save(_state(12, "finished"))
    assert saved == [(9, "epoch"), (12, "finished")]
    assert not CheckpointSchedule(None).save(_state(1, "epoch"))


def test_cancellation_follows_the_event_and_the_other_ranks(monkeypatch):
    assert not Cancellation(None, "cpu").requested()
    event = threading.Event()
    cancel = Cancellation(event, "cpu")
    assert not cancel.requested()
    event.set()
    assert cancel.requested()

    asked: list[tuple[bool, str]] = []

    def another_rank_asks(flag: bool, device: str) -> bool:
        asked.append((flag, device))
        return True

    monkeypatch.setattr(distributed, "any_rank", another_rank_asks)
    assert Cancellation(None, "cpu").requested()  # a stop on another rank stops this one
    assert asked == [(False, "cpu")]


def test_progress_report_fills_in_the_counters():
    seen: list[Progress] = []
    report = ProgressReport(seen.append, total=40)
    at = Position(step=3, epoch=1, batches_in_epoch=1, samples=96)
    report(at, "valid", 1.25, {"I(x;y)": 0.5})
    (progress,) = seen
    assert (progress.step, progress.epoch, progress.split) == (3, 1, "valid")
    assert (progress.loss, progress.mi, progress.total_steps, progress.samples) == (
        1.25,
        {"I(x;y)": 0.5},
        40,
        96,
    )
    assert 0 <= progress.elapsed_s < 60
    ProgressReport(None, total=None)(at, "train", 1.0, {})  # no callback: nothing to do


def test_progress_report_bar_counts_training_steps_only(capsys):
    report = ProgressReport(None, total=10, verbose=True, initial_step=4)
    at = Position(step=5)
    report(at, "train", 1.0, {})
    report(at, "valid", 1.0, {})
    assert report.bar is not None and report.bar.n == 5
    report.close()


def test_the_loop_takes_its_terms_from_distributed_batch_terms(monkeypatch):
    """One ``distributed.batch_terms`` per run, and every training step goes through it
    (under a process group it is what averages the gradients)."""
    made: list[torch.nn.Module] = []
    calls: list[int] = []

    def batch_terms(estimator):
        made.append(estimator)

        def terms(batch):
            calls.append(len(batch["x"]))
            return estimator.batch_terms(batch)

        return terms

    monkeypatch.setattr(distributed, "batch_terms", batch_terms)
    torch.manual_seed(0)
    model = build_estimator("doe", 2, 2, hidden_dims=[8])
    x = torch.randn(100, 2)
    log = train_mi_estimator(
        model, (x, x + torch.randn(100, 2)), max_iterations=6, batch_size=16, device="cpu"
    )
    assert made == [model]
    assert calls == [16] * 5 + [10]  # 90 training samples: 5 batches of 16, then 10
    assert log.attrs["steps"] == 6 and not math.isnan(log["value"].iloc[-1])
