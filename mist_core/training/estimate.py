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
from mist_core.estimators import ESTIMATORS, build_estimator, check_estimator_name
from mist_core.marginals import fit_marginal_map
from mist_core.reliability import reliability_warnings
from mist_core.training.auto import AutoConfig, auto_estimate
from mist_core.training.discrete import discrete_codes, discrete_estimate
from mist_core.training.evaluate import evaluate_pairs
from mist_core.training.inputs import ArrayLike, as_tensor
from mist_core.training.loop import train_mi_estimator
from mist_core.training.parts import LOG_COLUMNS

__all__ = ["EstimateResult", "estimate_mi"]


@dataclass(frozen=True)
class EstimateResult:
    """An MI estimate from :func:`estimate_mi`: ``mi`` and ``std_error`` in nats.

    ``estimator`` names what produced it (for ``"auto"``: the densities it chose, e.g.
    ``"Student-t copula"``); ``details`` says how and why (``details["reason"]``);
    ``warnings`` says when the number should not be trusted, and what to do.
    """

    mi: float
    std_error: float
    estimator: str
    log: pd.DataFrame = field(repr=False)
    model: nn.Module = field(repr=False)
    n_train: int = 0
    n_test: int = 0
    seconds: float = 0.0
    details: dict = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()


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
    marginal_map = marginal_map_name(standardize)
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
    estimator: str = "auto",
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
    auto: AutoConfig | None = None,
) -> EstimateResult:
    """Estimate :math:`I(X; Y)` in nats from paired samples ``x: [N, D_x]``, ``y: [N, D_y]``.

    The samples are split: ``test_fraction`` is held out for the estimate; of the rest,
    ``valid_percentage`` drives early stopping. ``standardize`` maps every coordinate of x
    and y through an invertible map fitted on the training split (the MI is unchanged):
    ``True`` or ``"standardize"`` (mean 0, std 1: any units work), ``"gaussianize"`` (the
    empirical CDF, then the normal quantile: heavy tails and bounded supports become
    Gaussian-shaped marginals; see :mod:`mist_core.marginals`), or ``False`` (raw data).

    With ``estimator="auto"`` (the default) the estimator is chosen without the truth
    (:mod:`mist_core.training.auto`): the data are Gaussianised, candidate densities
    (Gaussian and Student-t copulas in closed form, affine and spline flows) are fitted, and
    q(y|x) and q(y) are each chosen by held-out log-likelihood; a copula that wins both
    gives its closed-form MI on all samples less its finite-sample bias, anything else is
    cross-fitted over five folds (and where the contrastive lower bound read from the
    chosen q(y|x) on those folds is above that estimate, the bound is reported).
    ``result.estimator`` names the choice, ``result.details``
    says why (``details["reason"]``) and on what it was evaluated. A discrete ``y`` (at most
    64 distinct rows) gets a classifier for q(y|x) and its class frequencies for q(y)
    (:mod:`mist_core.training.discrete`). ``auto`` (an
    :class:`~mist_core.training.auto.AutoConfig`) sets the candidates, folds and time
    budget; a single estimator's options (``max_iterations``, ``standardize``, ``lr``...)
    do not apply, ``test_fraction`` only with ``AutoConfig(folds=1)``, and
    ``estimator_options`` / ``hidden_dims`` raise.

    Args:
        estimator: ``"auto"`` or one of :data:`mist_core.estimators.ESTIMATORS`.
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
    if estimator != "auto":
        check_estimator_name(estimator, ("auto", *ESTIMATORS))
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
    if estimator == "auto":
        if estimator_options or hidden_dims is not None:
            raise ValueError(
                "estimator_options and hidden_dims set a named estimator; estimator='auto' "
                "takes its candidates and budget from auto=AutoConfig(...)"
            )
        return _auto_result(x_t, y_t, test_fraction, seed, auto, start)
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
    more = reliability_warnings(
        None,
        estimator=estimator,
        mi=float(result.mi),
        std_error=float(result.std_error),
        log=None if getattr(model, "closed_form", False) else log,
        max_iterations=max_iterations,
        y=test[1] if marginal_map_name(standardize) != "gaussianize" else None,
    )
    return EstimateResult(
        mi=float(result.mi),
        std_error=float(result.std_error),
        estimator=estimator,
        log=log,
        model=model,
        n_train=len(train[0]),
        n_test=n_test,
        seconds=time.perf_counter() - start,
        details={"marginal_map": marginal_map_name(standardize) or "none"},
        warnings=tuple(dict.fromkeys(result.warnings + more)),
    )


def _auto_result(
    x: Tensor, y: Tensor, test_fraction: float, seed: int, config: AutoConfig | None, start: float
) -> EstimateResult:
    """``estimator="auto"``: a classifier for a discrete y, else the chosen densities."""
    codes = discrete_codes(y)
    if codes is not None:
        outcome = discrete_estimate(x, y, codes, seed=seed, config=config)
    else:
        outcome = auto_estimate(x, y, test_fraction=test_fraction, seed=seed, config=config)
    checks = reliability_warnings(
        outcome.log_ratio,
        estimator=outcome.estimator,
        mi=outcome.mi,
        std_error=outcome.std_error,
        y=y,
    )
    return EstimateResult(
        mi=outcome.mi,
        std_error=outcome.std_error,
        estimator=outcome.estimator,
        log=_empty_log(),
        model=outcome.model,
        n_train=outcome.n_train,
        n_test=outcome.n_test,
        seconds=time.perf_counter() - start,
        details=outcome.details,
        warnings=outcome.warnings + checks,
    )


def marginal_map_name(standardize: bool | str) -> str | None:
    """The marginal map ``standardize`` asks for: ``"standardize"``, ``"gaussianize"`` or None."""
    return "standardize" if standardize is True else (standardize or None)
