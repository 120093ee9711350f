"""From paired samples to an MI estimate in one call: :func:`estimate_mi`."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from mist_core._rng import seeded, seeded_permutation
from mist_core.estimators import build_estimator, check_estimator_name
from mist_core.marginals import fit_marginal_map
from mist_core.training.evaluate import evaluate_pairs
from mist_core.training.inputs import ArrayLike, as_tensor
from mist_core.training.loop import train_mi_estimator
from mist_core.training.parts import LOG_COLUMNS

__all__ = ["EstimateResult", "estimate_mi"]


@dataclass(frozen=True)
class EstimateResult:
    """An MI estimate from :func:`estimate_mi`: ``mi`` and ``std_error`` in nats."""

    mi: float
    std_error: float
    estimator: str
    log: pd.DataFrame = field(repr=False)
    model: nn.Module = field(repr=False)
    n_train: int = 0
    n_test: int = 0
    seconds: float = 0.0


def _paired_samples(x: ArrayLike, y: ArrayLike) -> tuple[Tensor, Tensor]:
    """``x``, ``y`` as float tensors ``[N, D_x]``, ``[N, D_y]`` (vectors ``[N]`` -> ``[N, 1]``)."""
    x_t, y_t = as_tensor(x), as_tensor(y)
    if x_t.ndim != 2 or y_t.ndim != 2:
        raise ValueError(
            f"x and y must be (N, D) arrays, got shapes {tuple(x_t.shape)} and {tuple(y_t.shape)}"
        )
    if len(x_t) != len(y_t):
        raise ValueError(
            f"x and y must hold the same number of samples, got {len(x_t)} and {len(y_t)}"
        )
    if not (torch.isfinite(x_t).all() and torch.isfinite(y_t).all()):
        raise ValueError("x and y must be finite (found NaN or infinity)")
    return x_t, y_t


def _map_marginals(
    standardize: bool | str, train: list[Tensor], test: list[Tensor], options: dict[str, Any]
) -> tuple[list[Tensor], list[Tensor], dict[str, Any]]:
    """``[x, y]`` of both splits mapped through an invertible per-coordinate map fitted on
    the training split (the MI is unchanged by it), and the estimator options moved along."""
    marginal_map = "standardize" if standardize is True else standardize
    if not marginal_map:
        return train, test, options
    if marginal_map == "gaussianize" and "entropy_y" in options:
        raise ValueError(
            "BA's entropy_y is known in the data's own units, and Gaussianizing changes "
            "H(Y) by an unknown amount; use standardize=True (or False) with BA"
        )
    maps = [fit_marginal_map(marginal_map, values) for values in train]
    train = [f(values) for f, values in zip(maps, train, strict=True)]
    test = [f(values) for f, values in zip(maps, test, strict=True)]
    if "entropy_y" in options:  # BA: H(Y / s) = H(Y) - sum(log s)
        options = {**options, "entropy_y": float(options["entropy_y"]) + maps[1].log_abs_det()}
    return train, test, options


def _empty_log() -> pd.DataFrame:
    """The log of an estimator with nothing to train, shaped like a training log."""
    log = pd.DataFrame(columns=list(LOG_COLUMNS))
    log.attrs.update(stopped=False, early_stopped=False, best_step=0, steps=0, epochs=0)
    return log


def _train_options(n_train: int, valid_percentage: float, batch_size: int, budget: int) -> dict:
    """When to validate, and how patiently.

    Once per epoch, or 10 times over the budget if that is more often: on a few thousand
    samples a critic can overfit within the first tenth of a long budget, and early stopping
    can only restore a point it has seen. Patience: at least a tenth of the budget, or a
    flow that learns slowly at first is stopped before it starts.
    """
    n_fit = n_train - int(n_train * valid_percentage)
    eval_every = max(1, min(math.ceil(n_fit / batch_size), budget // 10))
    return {"eval_every": eval_every, "patience": max(5, math.ceil(budget / 10 / eval_every))}


def estimate_mi(
    x: ArrayLike,
    y: ArrayLike,
    estimator: str = "doe",
    *,
    max_iterations: int = 2000,
    max_epochs: int | None = None,
    batch_size: int = 128,
    hidden_dims: Sequence[int] | None = None,
    lr: float = 1e-3,
    test_fraction: float = 0.5,
    valid_percentage: float = 0.1,
    early_stopping: bool = True,
    standardize: bool | str = True,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    estimator_options: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> EstimateResult:
    """Estimate :math:`I(X; Y)` in nats from paired samples ``x: [N, D_x]``, ``y: [N, D_y]``.

    The samples are split: ``test_fraction`` is held out for the estimate; of the rest,
    ``valid_percentage`` drives early stopping. ``standardize`` maps every coordinate of x
    and y through an invertible map fitted on the training split (the MI is unchanged):
    ``True`` or ``"standardize"`` (mean 0, std 1: any units work), ``"gaussianize"`` (the
    empirical CDF, then the normal quantile: heavy tails and bounded supports become
    Gaussian-shaped marginals; see :mod:`mist_core.marginals`), or ``False`` (raw data).

    Args:
        estimator: one of :data:`mist_core.estimators.ESTIMATORS`.
        hidden_dims: network widths (default: the estimator's own).
        estimator_options: further options of the estimator's factory (e.g. ``tau``).

    Example: ``y = x + noise / 2`` for a standard normal x holds ``0.5 log 5 = 0.80`` nats.

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(10_000, 1, generator=g)
        >>> y = x + 0.5 * torch.randn(10_000, 1, generator=g)
        >>> result = estimate_mi(x, y, "gaussian", device="cpu")
        >>> round(result.mi, 2), round(result.std_error, 2), result.n_test
        (0.8, 0.01, 5000)
    """
    check_estimator_name(estimator)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    x_t, y_t = _paired_samples(x, y)
    n = len(x_t)
    n_test = int(round(n * test_fraction))
    if n_test < 2 or n - n_test < 2 * batch_size:
        raise ValueError(
            f"{n} samples are too few: need at least 2 test samples and {2 * batch_size} "
            "training samples; lower batch_size or test_fraction"
        )
    start = time.perf_counter()
    order = seeded_permutation(n, seed)
    train = [x_t[order[n_test:]], y_t[order[n_test:]]]
    test = [x_t[order[:n_test]], y_t[order[:n_test]]]
    options = dict(estimator_options or {})
    train, test, options = _map_marginals(standardize, train, test, options)
    if hidden_dims is not None:
        options["hidden_dims"] = list(hidden_dims)
    with seeded(seed):
        model = build_estimator(estimator, x_t.shape[1], y_t.shape[1], **options)
    if getattr(model, "closed_form", False):  # nothing to train: fit on the training split
        model.fit(*train)
        log = _empty_log()
    else:
        log = train_mi_estimator(
            model,
            tuple(train),
            max_iterations=max_iterations,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            valid_percentage=valid_percentage,
            early_stopping=early_stopping,
            device=device,
            seed=seed,
            verbose=verbose,
            **_train_options(len(train[0]), valid_percentage, batch_size, max_iterations),
        )
    (result,) = evaluate_pairs(model, tuple(test), batch_size=batch_size, estimator_name=estimator)
    return EstimateResult(
        mi=float(result.mi),
        std_error=float(result.std_error),
        estimator=estimator,
        log=log,
        model=model,
        n_train=len(train[0]),
        n_test=n_test,
        seconds=time.perf_counter() - start,
    )
