"""The training loop: :func:`train_mi_estimator`.

It knows nothing about threads or UIs: a caller streams progress through ``callback``,
cancels through ``stop_event`` and saves what it needs through ``checkpoint``. Under a
process group (``torchrun``) every rank runs the same loop on its shard of the data; the
per-batch terms from :func:`mist_core.distributed.batch_terms` keep the replicas equal.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from mist_core import distributed
from mist_core._rng import GLOBAL_RNG_LOCK
from mist_core.devices import resolve_device
from mist_core.estimators import BatchTerms
from mist_core.training.evaluate import evaluate_terms
from mist_core.training.inputs import (
    Data,
    batch_size_of,
    epoch_batches,
    to_batch,
    training_loaders,
)
from mist_core.training.optim import check_optimizer_name, make_optimizer
from mist_core.training.parts import (
    Budget,
    Cancellation,
    CheckpointSchedule,
    EarlyStopping,
    MetricLog,
    Position,
    ProgressReport,
)
from mist_core.training.schedule import check_schedule_name, lr_factor
from mist_core.training.state import Progress, ResumeFrom, TrainState

__all__ = ["train_mi_estimator"]


@dataclass
class _Run:
    """What one call of :func:`train_mi_estimator` trains with."""

    estimator: nn.Module
    batch_terms: Callable[[Mapping[str, Tensor]], BatchTerms]
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    grad_clip: float | None
    lr_schedule: str
    base_lrs: list[float]
    train_loader: Iterable
    valid_loader: Iterable | None
    device: torch.device
    seed: int | None
    budget: Budget
    stopping: EarlyStopping
    log: MetricLog
    checkpoints: CheckpointSchedule
    cancel: Cancellation
    report: ProgressReport

    def save(self, at: Position, reason: str) -> None:
        self.checkpoints.save(
            TrainState(
                self.estimator, self.optimizer, at.step, at.epoch, at.batches_in_epoch, reason
            )
        )


def _check_finite(loss: Tensor, log_ratios: Mapping[str, Tensor], step: int) -> None:
    """Stop at the first non-finite loss, naming the step and the pairs that went bad."""
    if torch.isfinite(loss):
        return
    bad = [name for name, values in log_ratios.items() if not torch.isfinite(values).all()]
    where = f" (non-finite estimates for {', '.join(bad)})" if bad else ""
    raise FloatingPointError(
        f"the loss became {float(loss.detach())} at step {step}{where}; lower the learning rate, "
        "standardise the data, or use normalization='emanorm'"
    )


def _train_step(run: _Run, batch: dict[str, Tensor], at: Position) -> None:
    """One optimizer step on ``batch``, logged and reported."""
    terms = run.batch_terms(batch)
    _check_finite(terms.loss, terms.log_ratios, at.step)
    run.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    if run.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.params, run.grad_clip)
    if run.lr_schedule != "constant":
        factor = lr_factor(run.lr_schedule, at.step, run.budget.total)
        for group, base in zip(run.optimizer.param_groups, run.base_lrs, strict=True):
            group["lr"] = base * factor
    run.optimizer.step()
    at.advance(batch_size_of(batch))
    with torch.no_grad():  # one device sync per step for the whole log line
        values = torch.stack(
            [terms.loss.detach()] + [v.detach().mean() for v in terms.log_ratios.values()]
        ).tolist()
    logged = dict(zip(["loss", *terms.log_ratios], values, strict=True))
    run.log.add(at.step, at.epoch, "train", logged)
    run.report(at, "train", values[0], dict(zip(terms.log_ratios, values[1:], strict=True)))


def _validate(run: _Run, at: Position) -> bool:
    """Log a validation pass; True when early stopping says stop."""
    if run.valid_loader is None:
        return False
    loss, estimates = evaluate_terms(run.estimator, run.valid_loader, run.device)
    mi = {e.name: e.mi for e in estimates}
    run.log.add(at.step, at.epoch, "valid", {"loss": loss, **mi})
    run.report(at, "valid", loss, mi)
    return run.stopping.update(loss, at.step, run.estimator)


def _train_epochs(run: _Run, at: Position) -> str:
    """Train until the budget is spent (``"finished"``), a stop is asked (``"stopped"``) or
    validation stops improving (``"early_stopped"``)."""
    while run.budget.allows_epoch(at.step, at.epoch):
        for raw in epoch_batches(run.train_loader, at.epoch, run.seed, at.batches_in_epoch):
            _train_step(run, to_batch(raw, run.device), at)
            if run.cancel.requested():
                return "stopped"
            if run.budget.iterations_spent(at.step):
                return "finished"
            if run.budget.validates_after_step(at.step) and _validate(run, at):
                return "early_stopped"
        at.end_epoch()
        early_stop = run.budget.validates_per_epoch and _validate(run, at)
        run.save(at, "epoch")
        if early_stop:
            return "early_stopped"
    return "finished"


def _train(run: _Run, at: Position) -> pd.DataFrame:
    """Train, validate the final weights, restore the best ones, save the last state, and
    return the log."""
    run.estimator.train()
    outcome = _train_epochs(run, at)
    if at.step == 0:
        raise ValueError("the training data yielded no batches")
    if outcome == "finished" and run.valid_loader is not None and run.log.last_split != "valid":
        _validate(run, at)
    if outcome != "stopped":  # a stopped run resumes from its last weights, not the best
        run.stopping.restore(run.estimator)
    run.save(at, outcome)
    return run.log.frame(
        stopped=outcome == "stopped",
        early_stopped=outcome == "early_stopped",
        best_step=run.stopping.best_step,
        steps=at.step,
        epochs=at.epoch,
    )


def _training_data(
    estimator: nn.Module,
    train_data: Data | None,
    data: Data | None,
    max_epochs: int | None,
    max_iterations: int | None,
    valid_percentage: float,
    optimizer: str,
) -> Data:
    """The training data (``train_data`` or the seed's alias ``data``), with every argument
    that needs no data checked first."""
    if train_data is not None and data is not None:
        raise ValueError("give the training data once: train_data or data, not both")
    train_data = train_data if train_data is not None else data
    if train_data is None:
        raise ValueError("no training data: pass train_data=... (or data=...)")
    if max_epochs is None and max_iterations is None:
        raise ValueError("set max_epochs or max_iterations (or both)")
    for name, value in (("max_epochs", max_epochs), ("max_iterations", max_iterations)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= valid_percentage < 1.0:
        raise ValueError(f"valid_percentage must lie in [0, 1), got {valid_percentage}")
    check_optimizer_name(optimizer)
    if not hasattr(estimator, "batch_terms"):
        raise TypeError(
            f"{type(estimator).__name__} is not an MI estimator (no batch_terms method)"
        )
    return train_data


def _trainable(estimator: nn.Module) -> list[nn.Parameter]:
    params = [p for p in estimator.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the estimator has no trainable parameters")
    return params


def _resume_optimizer(optimizer: torch.optim.Optimizer, resume: ResumeFrom | None) -> None:
    """Load a saved optimizer state; one of another parameter layout is dropped, with a
    warning attributed to the caller of :func:`train_mi_estimator`."""
    if resume is None or resume.optimizer_state is None:
        return
    try:
        optimizer.load_state_dict(resume.optimizer_state)
    except ValueError as error:  # another layout, e.g. one Adam state per head tensor
        warnings.warn(
            f"the saved optimizer state does not fit this model's parameters ({error}); "
            "training resumes with the saved weights and a fresh optimizer state",
            RuntimeWarning,
            stacklevel=3,
        )


def train_mi_estimator(
    estimator: nn.Module,
    train_data: Data | None = None,
    *,
    data: Data | None = None,
    valid_data: Data | None = None,
    valid_percentage: float = 0.1,
    max_epochs: int | None = None,
    max_iterations: int | None = None,
    batch_size: int = 64,
    optimizer: str = "adam",
    lr: float = 5e-4,
    lr_schedule: str = "constant",
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    early_stopping: bool = True,
    patience: int = 5,
    eval_every: int | None = None,
    device: str | torch.device | None = "auto",
    verbose: bool = False,
    callback: Callable[[Progress], None] | None = None,
    stop_event: threading.Event | None = None,
    seed: int | None = None,
    checkpoint: Callable[[TrainState], None] | None = None,
    resume: ResumeFrom | None = None,
) -> pd.DataFrame:
    """Train ``estimator`` by minimising its loss, and return the log.

    Args:
        estimator: an :class:`~mist_core.MIEstimator`, ``MultiMIEstimator`` or
            ``TransformedMIEstimator`` (anything with ``batch_terms(batch)``).
        train_data: batches (see :mod:`mist_core.training.inputs`); ``data`` is the seed's alias.
        valid_data: validation batches; when ``None``, ``valid_percentage`` of the training
            samples are held out (0 disables validation).
        max_epochs, max_iterations: stop after whichever comes first (at least one).
        batch_size: used when the data are tensors, not a DataLoader.
        optimizer, lr, weight_decay, grad_clip: ``"adam"``, ``"adamw"`` or ``"sgd"``, its
            learning rate and weight decay, and a max gradient norm (``None``: no clipping).
        lr_schedule: ``"constant"`` (``lr`` throughout) or ``"one-cycle"`` (a warm-up to
            ``lr`` over the first quarter of the planned steps, then a cosine fall to ~0;
            :mod:`mist_core.training.schedule`). A resumed run takes the rate of its step.
        early_stopping, patience: stop when the validation loss has not improved for
            ``patience`` validations, and restore the weights of the best one.
        eval_every: validate every this many steps (default: once per epoch, or 10 times
            over a ``max_iterations`` budget).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; the estimator is moved there.
        verbose: show a tqdm progress bar.
        callback: called with a :class:`Progress` after every step and every validation.
        stop_event: when set, training stops after the current step.
        seed: seeds torch and the data order (each epoch's order is fixed by seed and epoch).
        checkpoint: called with a :class:`TrainState` at the end of every epoch, when
            ``stop_event`` ends training, and at the end; it can save what it needs.
        resume: continue a run from a checkpoint: the step and epoch counters, the
            optimizer state, and the batches of the interrupted epoch to skip. The
            estimator's weights must already be loaded.

    Returns:
        A long-form ``pandas.DataFrame`` with columns ``step, epoch, split, name, value``
        (names: ``loss`` and ``I(x;y)`` per pair). ``df.attrs`` holds ``stopped`` (True if
        ``stop_event`` ended it), ``early_stopped``, ``best_step``, ``steps`` (the step
        counter at the end, including steps before a resume) and ``epochs`` (completed).
    """
    train_data = _training_data(
        estimator, train_data, data, max_epochs, max_iterations, valid_percentage, optimizer
    )
    check_schedule_name(lr_schedule)
    if seed is not None:
        with GLOBAL_RNG_LOCK:  # not in the middle of another thread's seeded build
            torch.manual_seed(seed)
    device = resolve_device(device)
    estimator.to(device)
    train_loader, valid_loader = training_loaders(
        train_data, valid_data, valid_percentage, batch_size, seed
    )
    params = _trainable(estimator)
    opt = make_optimizer(optimizer, params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = Budget.steps_per_epoch(train_loader)
    budget = Budget.plan(max_epochs, max_iterations, steps_per_epoch, eval_every)
    if lr_schedule != "constant":
        lr_factor(lr_schedule, 0, budget.total)  # a run of unknown length is refused here
    at = Position.resume(resume)
    _resume_optimizer(opt, resume)
    run = _Run(
        estimator=estimator,
        batch_terms=distributed.batch_terms(estimator),
        optimizer=opt,
        params=params,
        grad_clip=grad_clip,
        lr_schedule=lr_schedule,
        base_lrs=[lr for _ in opt.param_groups],
        train_loader=train_loader,
        valid_loader=valid_loader,
        device=device,
        seed=seed,
        budget=budget,
        stopping=EarlyStopping(patience, enabled=early_stopping),
        log=MetricLog(),
        checkpoints=CheckpointSchedule(checkpoint),
        cancel=Cancellation(stop_event, device),
        report=ProgressReport(callback, budget.total, verbose, initial_step=at.step),
    )
    try:
        return _train(run, at)
    finally:
        run.report.close()
