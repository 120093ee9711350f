"""Evaluating a trained estimator: the mean loss and one :class:`PairEstimate` per pair."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mist_core.devices import resolve_device
from mist_core.results import PairEstimate, parse_pair_name
from mist_core.training.inputs import Data, batch_size_of, make_loader, module_device, to_batch

__all__ = ["evaluate_mi", "evaluate_pairs", "evaluate_terms"]


class _TermSums:
    """Running sums of the per-sample terms of one pair, in float64."""

    def __init__(self) -> None:
        self.total, self.squares, self.count = 0.0, 0.0, 0

    def add(self, values: torch.Tensor) -> None:
        values = values.double()
        self.total += float(values.sum())
        self.squares += float((values * values).sum())
        self.count += values.numel()

    def estimate(self, name: str, estimator_name: str | None) -> PairEstimate:
        """The mean, and the standard error of the mean, of the terms added."""
        mean = self.total / self.count
        variance = max(self.squares / self.count - mean * mean, 0.0)
        std_error = math.sqrt(variance / max(self.count - 1, 1))
        representation, target = parse_pair_name(name)
        return PairEstimate(representation, target, mean, std_error, self.count, estimator_name)


@torch.no_grad()
def evaluate_terms(
    estimator: nn.Module,
    data: Iterable,
    device: torch.device,
    max_batches: int | None = None,
    estimator_name: str | None = None,
) -> tuple[float, list[PairEstimate]]:
    """The mean loss over ``data``'s batches, and one estimate per pair.

    Runs in eval mode without gradients, weighs each batch by its number of samples, and
    leaves the module's train/eval mode as it found it. ``estimator_name`` (e.g. ``"doe"``)
    is recorded in the estimates.

    Raises:
        ValueError: ``data`` yielded no batches.
    """
    was_training = estimator.training
    estimator.eval()
    try:
        loss_sum, n_total = 0.0, 0
        sums: dict[str, _TermSums] = {}
        for index, raw in enumerate(data):
            if max_batches is not None and index >= max_batches:
                break
            batch = to_batch(raw, device)
            n = batch_size_of(batch)
            if n < 2 and n_total > 0:
                continue  # a trailing single sample has no in-batch negatives; skip it
            terms = estimator.batch_terms(batch)
            loss_sum += float(terms.loss) * n
            n_total += n
            for name, values in terms.log_ratios.items():
                sums.setdefault(name, _TermSums()).add(values)
    finally:
        estimator.train(was_training)
    if n_total == 0:
        raise ValueError("the evaluation data yielded no batches")
    return loss_sum / n_total, [s.estimate(name, estimator_name) for name, s in sums.items()]


def evaluate_pairs(
    estimator: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    estimator_name: str | None = None,
) -> list[PairEstimate]:
    """One :class:`~mist_core.results.PairEstimate` per pair of ``estimator`` on ``data``.

    ``data`` takes every form :func:`evaluate_mi` does; ``device`` defaults to the
    estimator's own.
    """
    device = module_device(estimator) if device is None else resolve_device(device)
    loader = make_loader(data, batch_size, False, None)
    return evaluate_terms(estimator, loader, device, max_batches, estimator_name)[1]


def evaluate_mi(
    estimator: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    return_std_error: bool = False,
) -> Any:
    """Estimate MI on ``data`` with a trained estimator, in nats.

    Runs in eval mode without gradients, averages the per-sample terms weighted by the
    number of samples, and leaves the module's train/eval mode as it found it.

    Returns:
        ``{"I(x;y)": float}`` per pair, or a float when there is one pair. With
        ``return_std_error=True``, a tuple ``(values, standard_errors)`` of that form; the
        standard error is that of the mean of the per-sample terms.
    """
    estimates = evaluate_pairs(
        estimator, data, batch_size=batch_size, device=device, max_batches=max_batches
    )
    values = {e.name: e.mi for e in estimates}
    errors = {e.name: e.std_error for e in estimates}
    if len(values) == 1:
        (value,), (error,) = values.values(), errors.values()
        return (value, error) if return_std_error else value
    return (values, errors) if return_std_error else values
