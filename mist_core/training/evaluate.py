"""Evaluating a trained estimator: the mean loss and one :class:`PairEstimate` per pair,
with its reliability warnings (:mod:`mist_core.reliability`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mist_core.devices import resolve_device
from mist_core.reliability import reliability_warnings
from mist_core.results import PairEstimate, parse_pair_name
from mist_core.training.inputs import Data, batch_size_of, make_loader, module_device, to_batch

__all__ = ["evaluate_mi", "evaluate_pairs", "evaluate_terms"]


class _TermSums:
    """Running sums of the per-sample terms of one pair, in float64; with ``keep``, the
    terms themselves too (on their device), for the reliability checks."""

    def __init__(self, keep: bool = False) -> None:
        self.total, self.squares, self.count = 0.0, 0.0, 0
        self.kept: list[torch.Tensor] | None = [] if keep else None

    def add(self, values: torch.Tensor) -> None:
        if self.kept is not None:
            self.kept.append(values.detach().reshape(-1))
        values = values.double()
        self.total += float(values.sum())
        self.squares += float((values * values).sum())
        self.count += values.numel()

    def estimate(
        self, name: str, estimator_name: str | None, batch_size: int | None = None
    ) -> PairEstimate:
        """The mean, and the standard error of the mean, of the terms added; with the kept
        terms, the warnings of :func:`~mist_core.reliability.reliability_warnings` (InfoNCE's
        cap from ``batch_size``, the largest evaluation batch)."""
        mean = self.total / self.count
        variance = max(self.squares / self.count - mean * mean, 0.0)
        std_error = math.sqrt(variance / max(self.count - 1, 1))
        representation, target = parse_pair_name(name)
        warnings: tuple[str, ...] = ()
        if self.kept is not None:
            warnings = reliability_warnings(
                torch.cat(self.kept),
                estimator=estimator_name,
                mi=mean,
                std_error=std_error,
                batch_size=batch_size,
            )
        return PairEstimate(
            representation, target, mean, std_error, self.count, estimator_name, warnings
        )


@torch.no_grad()
def evaluate_terms(
    estimator: nn.Module,
    data: Iterable,
    device: torch.device,
    max_batches: int | None = None,
    estimator_name: str | None = None,
    checks: bool = False,
) -> tuple[float, list[PairEstimate]]:
    """The mean loss over ``data``'s batches, and one estimate per pair.

    Runs in eval mode without gradients, weighs each batch by its number of samples, and
    leaves the module's train/eval mode as it found it. ``estimator_name`` (e.g. ``"doe"``)
    is recorded in the estimates. With ``checks``, the per-sample terms are kept (one float
    per sample and pair, on the device) and each estimate carries the warnings of
    :func:`~mist_core.reliability.reliability_warnings`: a few samples carry the mean, a
    clearly negative estimate, and for ``estimator_name == "infonce"`` an estimate at
    log(batch), the largest evaluation batch (every InfoNCE term is at most log of its
    batch's size). Off for the training loop's validations, which keep only the means.

    Raises:
        ValueError: ``data`` yielded no batches.
    """
    was_training = estimator.training
    estimator.eval()
    try:
        loss_sum, n_total, largest = 0.0, 0, 0
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
            largest = max(largest, n)
            for name, values in terms.log_ratios.items():
                sums.setdefault(name, _TermSums(checks)).add(values)
    finally:
        estimator.train(was_training)
    if n_total == 0:
        raise ValueError("the evaluation data yielded no batches")
    estimates = [s.estimate(name, estimator_name, largest) for name, s in sums.items()]
    return loss_sum / n_total, estimates


def evaluate_pairs(
    estimator: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    estimator_name: str | None = None,
    checks: bool = True,
) -> list[PairEstimate]:
    """One :class:`~mist_core.results.PairEstimate` per pair of ``estimator`` on ``data``.

    ``data`` takes every form :func:`evaluate_mi` does; ``device`` defaults to the
    estimator's own. With ``checks`` (the default) each estimate carries its reliability
    warnings (see :func:`evaluate_terms`).
    """
    device = module_device(estimator) if device is None else resolve_device(device)
    loader = make_loader(data, batch_size, False, None)
    return evaluate_terms(estimator, loader, device, max_batches, estimator_name, checks)[1]


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
    estimates = evaluate_pairs(  # the seed's floats carry no warnings: skip the checks
        estimator,
        data,
        batch_size=batch_size,
        device=device,
        max_batches=max_batches,
        checks=False,
    )
    values = {e.name: e.mi for e in estimates}
    errors = {e.name: e.std_error for e in estimates}
    if len(values) == 1:
        (value,), (error,) = values.values(), errors.values()
        return (value, error) if return_std_error else value
    return (values, errors) if return_std_error else values
