r"""Reliability flags: plain-English warnings on an MI estimate that cannot be trusted.

Each check is a small pure function that returns one sentence, saying what is wrong and
what to do, or ``None`` when it has nothing to say; :func:`reliability_warnings` runs every
check that applies, in a fixed order. The sentences travel with the estimate
(:class:`mist_core.results.PairEstimate` ``.warnings``) to the CLI and the dashboard, which
show them beside the number.

The checks:

- :func:`few_samples_dominate`: the mean of the per-sample log-ratios is carried by a few
  extreme terms (a critic that blew up on a handful of samples: JS returning -7,591 nats).
- :func:`negative_estimate`: clearly below zero, worse than independence on held-out data.
- :func:`infonce_bound_warning`: InfoNCE at its cap :math:`\log B`, the true MI may be larger.
- :func:`above_bound`: above a known upper bound, e.g. the entropy of a discrete target
  (:func:`discrete_entropy`).
- :func:`still_rising`: training hit its budget while the validation estimate still rose.

This module imports nothing else from mist_core (a leaf).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "above_bound",
    "discrete_entropy",
    "few_samples_dominate",
    "infonce_bound_warning",
    "negative_estimate",
    "reliability_warnings",
    "still_rising",
]

#: Fraction of the per-sample terms trimmed on each side by :func:`few_samples_dominate`.
TRIM_FRACTION = 0.005
#: Fewest samples on which :func:`few_samples_dominate` judges (below, its standard error
#: is itself too noisy: at n = 10-20 a correct Student-t model tripped it in 1-6% of draws).
MIN_SAMPLES = 50
#: Smallest shift, in nats, that :func:`few_samples_dominate` reports. Trimming a skewed but
#: legitimate distribution moves its mean by a fixed amount that does not shrink with n
#: (0.0095 nats for the pointwise MI of a Cauchy pair), while its standard error does.
MIN_SHIFT = 0.05
#: The most distinct values a target may take for :func:`discrete_entropy` to bound the MI.
MAX_DISCRETE_VALUES = 64
#: Fewest validation points on which :func:`still_rising` judges a trend.
MIN_VALID_POINTS = 6
#: Smallest rise, in nats over the last third of validation, that :func:`still_rising` reports.
MIN_RISE = 0.01
#: How close, in nats, to log(batch) an InfoNCE estimate counts as at its cap.
INFONCE_MARGIN = 0.1


def _nats(value: float, sign: bool = False) -> str:
    """``value`` for a sentence: 3 significant digits, whole numbers with commas from 1,000."""
    plus = "+" if sign else ""
    return f"{value:{plus},.0f}" if abs(value) >= 1000 else f"{value:{plus}.3g}"


def few_samples_dominate(log_ratio: Tensor) -> str | None:
    r"""A warning when the mean of ``log_ratio`` is carried by a few extreme per-sample terms.

    ``log_ratio`` is ``[N]``, the per-sample terms whose mean is the estimate. The
    :math:`k = \max(1, \lfloor 0.005 N \rfloor)` most extreme terms on each side are trimmed;
    the warning fires when

    .. math:: |\bar t - \bar t_{trim}| > \max(3\,\mathrm{se}_{trim},\ 0.05\text{ nats})

    with :math:`\mathrm{se}_{trim}` the standard error of the trimmed mean. Any NaN or
    infinite term fires too. Below 50 samples it stays silent (``None``).

    Why these numbers (50 seeded draws per case, the largest :math:`|shift| / threshold`
    seen; it fires at 1): the true pointwise MI of a bivariate normal, rho = 0.9, 0.99 or
    0.999, n = 500 to 500,000: at most 0.10; of a 1-d Student-t pair with identity
    dispersion, dof 1 (Cauchy) or 2: at most 0.31 (its trimming shift is a steady 0.0095
    nats, which the 0.05 floor absorbs at large n, where 3 se alone would be 0.003); at
    n = 50 to 1,000 (300 draws each): at most 0.57. A JS critic that blew up on one sample
    of 5,000 (4,999 terms ~ N(0.3, 0.5), one at -3.8e7) gives a ratio of about 150,000.
    """
    terms = log_ratio.detach().reshape(-1).double().cpu()
    n = terms.numel()
    finite = torch.isfinite(terms)
    if not bool(finite.all()):
        bad = n - int(finite.sum())
        return (
            f"{bad:,} of {n:,} per-sample terms are NaN or infinite, so the estimate is not a "
            "number to trust: the model failed on those samples; retrain it (a lower "
            "learning rate) or use a density-based estimator such as DoE"
        )
    if n < MIN_SAMPLES:
        return None
    k = max(1, int(TRIM_FRACTION * n))
    ordered = terms.sort().values
    kept = ordered[k : n - k]
    mean, trimmed = float(terms.mean()), float(kept.mean())
    std_error = float(kept.std()) / math.sqrt(kept.numel())
    shift = mean - trimmed
    if abs(shift) <= max(3.0 * std_error, MIN_SHIFT):
        return None
    return (
        f"the {k} highest and {k} lowest of {n:,} per-sample terms move the estimate by "
        f"{_nats(shift, sign=True)} nats (without them it is {_nats(trimmed)} nats, not "
        f"{_nats(mean)}): the number rests on a few samples; use a density-based estimator "
        "such as DoE, a lower learning rate, or more held-out samples"
    )


def negative_estimate(mi: float, std_error: float) -> str | None:
    r"""A warning when ``mi`` lies below both :math:`-3\,\mathrm{se}` and -0.02 nats.

    MI is never negative; a held-out estimate clearly below zero means the model's
    log-ratios do worse than independence on new samples.
    """
    if not (math.isfinite(mi) and mi < -0.02 and mi < -3.0 * max(std_error, 0.0)):
        return None
    by = f" by {-mi / std_error:.3g} standard errors" if std_error > 0 else ""
    return (
        f"{mi:.3g} nats is below zero{by}: the model does worse than independence on "
        "held-out data (underfit or a failed run); train longer, lower the learning rate, "
        "or check the data"
    )


def above_bound(
    mi: float, std_error: float, bound: float, what: str, advice: str | None = None
) -> str | None:
    """A warning when ``mi`` exceeds a known upper ``bound`` by more than 2 standard errors
    and more than 0.02 nats.

    ``what`` names the bound in the sentence (e.g. ``"log(batch)"``); ``advice`` says what to
    do (a general sentence by default).
    """
    excess = mi - bound
    if not (math.isfinite(mi) and excess > 0.02 and excess > 2.0 * max(std_error, 0.0)):
        return None
    advice = advice or (
        "the estimator overfit or failed; check it on more held-out samples or with a "
        "simpler model"
    )
    return (
        f"{mi:.3g} nats is above {what} = {bound:.3g} nats, which the true MI cannot "
        f"exceed: {advice}"
    )


def infonce_bound_warning(mi: float, batch_size: int) -> str | None:
    r"""A warning when InfoNCE's ``mi`` is within 0.1 nats of (or above) :math:`\log B`.

    Every InfoNCE term is at most :math:`\log B` for a batch of :math:`B` samples, so the
    estimate saturates there and the true MI may be larger (Poole et al., 2019, "On
    Variational Bounds of Mutual Information").
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cap = math.log(batch_size)
    if not (math.isfinite(mi) and mi >= cap - INFONCE_MARGIN):
        return None
    return (
        f"{mi:.3g} nats is at log(batch) = log({batch_size}) = {cap:.3g} nats, the most "
        "InfoNCE can report: the true MI may be larger; use DoE or a larger batch"
    )


def discrete_entropy(y: Tensor) -> float | None:
    r"""The entropy in nats of a discrete ``y: [N, D]`` (rows as values), or ``None``.

    ``y`` counts as discrete when its rows take at most 64 distinct values and fewer than
    ``N / 5``. Then :math:`H(Y) \ge I(X; Y)` for any ``X``. The plug-in entropy is biased
    low by about :math:`(K - 1) / 2N` for :math:`K` values (0.1 nats at K = 64, N = 320),
    which would flag honest estimates, so the Miller-Madow correction adds that back.
    """
    values = y.detach().reshape(len(y), -1) if y.ndim > 1 else y.detach().reshape(-1, 1)
    n = len(values)
    if n == 0:
        return None
    counts = torch.unique(values.cpu(), dim=0, return_counts=True)[1].double()
    k = counts.numel()
    if k > MAX_DISCRETE_VALUES or k >= n / 5:
        return None
    p = counts / n
    return float(-(p * p.log()).sum()) + (k - 1) / (2 * n)


#: Two-sided 95% quantiles of Student's t for 1 to 10 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _t975(dof: int) -> float:
    """The 97.5% quantile of Student's t (Cornish-Fisher above 10 degrees of freedom, where
    it is within 0.005 of the exact value)."""
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def _slope(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares slope of ``y`` on ``x`` (at least 3 points) and its standard error."""
    m = len(x)
    mx, my = sum(x) / m, sum(y) / m
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return 0.0, math.inf
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    residuals = sum((b - my - slope * (a - mx)) ** 2 for a, b in zip(x, y, strict=True))
    return slope, math.sqrt(residuals / (m - 2) / sxx)


def _rising(points: pd.DataFrame) -> bool:
    """Whether validation ``points`` (columns step, value; by step) were still rising."""
    values = [float(v) for v in points["value"]]
    steps = [float(s) for s in points["step"]]
    n = len(values)
    if n < MIN_VALID_POINTS or not all(map(math.isfinite, values)):
        return False
    if max(values[-max(2, math.ceil(n / 10)) :]) < max(values):
        return False  # the best validation is not at the end
    m = max(5, math.ceil(n / 3))
    slope, std_error = _slope(steps[-m:], values[-m:])
    rise = slope * (steps[-1] - steps[-m])
    return slope > max(2.0, _t975(m - 2)) * std_error and rise > MIN_RISE


def still_rising(log: pd.DataFrame, *, max_iterations: int | None) -> str | None:
    r"""A warning when training hit its budget while the validation MI was still rising.

    ``log`` is :func:`mist_core.training.train_mi_estimator`'s long-form log (columns
    ``step, epoch, split, name, value``; ``attrs`` with ``early_stopped``, ``stopped``,
    ``steps``, ``epochs``). Each pair's validation MI (rows ``split == "valid"``, names
    ``I(x;y)``) counts as rising when it has at least 6 points, its best value is among the
    last tenth of them (at least the last two), and the least-squares slope over the last
    third (at least 5 points) is above :math:`\max(2, t_{0.975})` standard errors and adds up
    to more than 0.01 nats. Silent when training stopped early or was stopped by hand.

    Why (simulated validation curves with noise sd 0.02 nats, 4,000 draws): on a flat curve
    it fires in 1-2% of draws for 6 to 50 points (the plain "2 standard errors" on the
    last third, 4 points, fired in 6%; the t quantile mends the few degrees of freedom);
    on :math:`1 - e^{-2s}` over the budget :math:`s \in (0, 1]`, still rising at the end,
    it fires in 89-100% (with the best among the last two only, 58% at 50 points).
    """
    if log.attrs.get("early_stopped") or log.attrs.get("stopped") or log.empty:
        return None
    valid = log[(log["split"] == "valid") & log["name"].astype(str).str.startswith("I(")]
    names = list(dict.fromkeys(valid["name"]))
    rising = [n for n in names if _rising(valid[valid["name"] == n].sort_values("step"))]
    if not rising:
        return None
    steps = int(log.attrs.get("steps", int(log["step"].max())))
    which = "" if len(names) == 1 else f" ({', '.join(rising)})"
    if max_iterations is not None and steps >= max_iterations:
        fix = f"budget of {max_iterations} steps: raise max_iterations"
    else:
        epochs = log.attrs.get("epochs")
        done = f"{steps} steps" + (f", {epochs} epochs" if epochs is not None else "")
        fix = f"budget ({done}): raise max_epochs (or max_iterations)"
    return (
        f"the validation estimate{which} was still rising when training hit its {fix}; "
        "the estimate is likely too low"
    )


def reliability_warnings(
    log_ratio: Tensor | None,
    *,
    estimator: str | None,
    mi: float,
    std_error: float,
    batch_size: int | None = None,
    log: pd.DataFrame | None = None,
    max_iterations: int | None = None,
    y: Tensor | None = None,
) -> tuple[str, ...]:
    """Every applicable warning on one estimate, in a fixed order, each once.

    Order: :func:`few_samples_dominate` (when ``log_ratio: [N]`` is given),
    :func:`negative_estimate`, :func:`infonce_bound_warning` (``estimator == "infonce"``
    with a ``batch_size``), :func:`above_bound` against :func:`discrete_entropy` of
    ``y: [N, D_y]`` (when given and discrete), :func:`still_rising` (when a training ``log``
    is given).

    Example: a JS critic that blew up on one held-out sample of 1,000.

        >>> import torch
        >>> terms = torch.full((1000,), 0.3)
        >>> terms[0] = -1e5
        >>> mi, se = float(terms.mean()), float(terms.std() / 1000**0.5)
        >>> reliability_warnings(terms, estimator="js", mi=mi, std_error=se)  # doctest: +ELLIPSIS
        ('the 5 highest and 5 lowest of 1,000 per-sample terms move the estimate by -100 nats...',)
        >>> reliability_warnings(torch.full((1000,), 0.3), estimator="doe", mi=0.3, std_error=0.0)
        ()
    """
    found: list[str | None] = []
    if log_ratio is not None:
        found.append(few_samples_dominate(log_ratio))
    found.append(negative_estimate(mi, std_error))
    if estimator == "infonce" and batch_size is not None:
        found.append(infonce_bound_warning(mi, batch_size))
    if y is not None:
        entropy = discrete_entropy(y)
        if entropy is not None:
            found.append(
                above_bound(
                    mi,
                    std_error,
                    entropy,
                    "the entropy of the discrete target H(Y)",
                    "the target takes few distinct values and a density model can pile its "
                    "mass on them; add noise narrower than the gap between values "
                    "(dequantize) or use a discriminative estimator such as InfoNCE",
                )
            )
    if log is not None:
        found.append(still_rising(log, max_iterations=max_iterations))
    return tuple(dict.fromkeys(w for w in found if w is not None))
