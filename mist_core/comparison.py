"""Runs side by side: seed groups, their mean and spread, smoothed curves, settings that differ.

Pure functions over what the run store gives (:class:`~mist_core.runs.RunInfo`, configs,
:class:`~mist_core.results.PairEstimate` tables, metric curves); the dashboard and the CLI
draw what they return.

A *seed group* is the runs whose configs are equal but for ``seed`` (:func:`seed_key`): the
same experiment repeated. Across its :math:`k` runs an MI estimate is summarised by the mean
and the standard error of the mean across runs,

.. math::

    \\bar I = \\frac{1}{k} \\sum_{i=1}^{k} I_i, \\qquad
    \\mathrm{s.e.} = \\frac{s}{\\sqrt{k}}, \\quad
    s^2 = \\frac{1}{k-1} \\sum_{i=1}^{k} (I_i - \\bar I)^2,

which holds the spread from training (initialisation, data order, subsets) that one run's
own standard error (over its test images) leaves out.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mist_core.experiment.config import LIMITS, ExperimentConfig
from mist_core.results import PairEstimate, pair_name
from mist_core.runs import RunInfo

__all__ = [
    "GroupEstimate",
    "SeedGroup",
    "differing_settings",
    "ema",
    "group_by_seed",
    "mean_curve",
    "mean_estimates",
    "repeat_configs",
    "seed_key",
]


def _fields(config: ExperimentConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A config's fields as a plain dict (an experiment config, or a run's JSON object)."""
    if isinstance(config, ExperimentConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(
        f"expected an ExperimentConfig or a mapping of config fields, got "
        f"{type(config).__name__}; open the store with mist_core.checkpoints.run_store"
    )


# --- seed groups ---------------------------------------------------------------------------


def seed_key(config: ExperimentConfig | Mapping[str, Any]) -> str:
    """A key that configs equal but for ``seed`` share: their fields but ``seed``, as JSON
    with sorted keys (so it is stable across processes and field order).

    >>> seed_key(ExperimentConfig(seed=1)) == seed_key(ExperimentConfig(seed=7))
    True
    >>> seed_key(ExperimentConfig(epochs=1)) == seed_key(ExperimentConfig(epochs=2))
    False
    """
    fields = _fields(config)
    fields.pop("seed", None)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class SeedGroup:
    """Runs whose configs are equal but for ``seed`` (a group of one run is a group too).

    ``key`` is their :func:`seed_key` (``"run:NAME"`` for a run whose config could not be
    read); ``runs`` are in the order they were given.
    """

    key: str
    runs: tuple[RunInfo, ...]

    @property
    def seeds(self) -> tuple[int | None, ...]:
        """The seed of each run, in order (``None`` where its config has none)."""
        return tuple(_seed_of(info.config) for info in self.runs)


def _seed_of(config: Any) -> int | None:
    if isinstance(config, ExperimentConfig):
        return config.seed
    if isinstance(config, Mapping) and isinstance(config.get("seed"), int):
        return config["seed"]
    return None


def group_by_seed(infos: Sequence[RunInfo]) -> list[SeedGroup]:
    """The runs in seed groups, in the order each group's first run comes; runs in each
    group keep their order. A run without a readable config is a group of its own.

    ``infos``: e.g. :meth:`RunStore.list`'s entries, or the runs a person picked.
    """
    groups: dict[str, list[RunInfo]] = {}
    for info in infos:
        try:
            key = seed_key(info.config)
        except TypeError:  # None (unreadable config.json) or an unknown type
            key = f"run:{info.name}"
        groups.setdefault(key, []).append(info)
    return [SeedGroup(key, tuple(runs)) for key, runs in groups.items()]


# --- mean and spread across runs -----------------------------------------------------------


@dataclass(frozen=True)
class GroupEstimate:
    """An MI estimate of one pair across the runs of a group, in nats.

    ``mi`` is the mean of ``values`` (the runs' finite estimates, in the order of the runs;
    ``k = len(values)``); ``std_error`` their sample standard deviation over
    :math:`\\sqrt{k}`, or, for ``k = 1``, that run's own standard error (over its test
    images). Both are NaN for ``k = 0`` (every run's estimate was NaN).
    """

    representation: str
    target: str
    mi: float
    std_error: float
    k: int
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        """``"I(representation;target)"``."""
        return pair_name(self.representation, self.target)


def mean_estimates(tables: Sequence[Sequence[PairEstimate]]) -> list[GroupEstimate]:
    """Per pair (representation, target), the mean and standard error across ``tables``
    (one table of :class:`PairEstimate` per run), in the order the pairs first appear.
    NaN estimates are left out (``k`` counts the finite ones).

    >>> tables = [[PairEstimate("e", "nose", mi, 0.1)] for mi in (1.0, 1.2, 1.4)]
    >>> e = mean_estimates(tables)[0]
    >>> round(e.mi, 6), round(e.std_error, 6), e.k  # s = 0.2, s.e. = 0.2 / sqrt(3)
    (1.2, 0.11547, 3)
    """
    values: dict[tuple[str, str], list[float]] = {}
    own_errors: dict[tuple[str, str], list[float]] = {}
    for table in tables:
        for estimate in table:
            pair = (estimate.representation, estimate.target)
            values.setdefault(pair, [])
            own_errors.setdefault(pair, [])
            if math.isfinite(estimate.mi):
                values[pair].append(float(estimate.mi))
                own_errors[pair].append(float(estimate.std_error))
    out = []
    for (representation, target), found in values.items():
        k = len(found)
        if k == 0:
            mi = std_error = math.nan
        else:
            mi = math.fsum(found) / k
            if k == 1:
                std_error = own_errors[(representation, target)][0]
            else:
                std_error = float(np.std(found, ddof=1)) / math.sqrt(k)
        out.append(GroupEstimate(representation, target, mi, std_error, k, tuple(found)))
    return out


def mean_curve(
    curves: Sequence[Sequence[tuple[int, float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of several runs' curves and its standard error across runs, step by step.

    ``curves``: one sequence of ``(step, value)`` per run (a step given twice: its last value).

    Returns ``(steps, mean, std_error)``, each ``(S,)`` (steps int64, sorted). The steps are
    those *every* curve has, where NaN values are left out (``k`` counts the finite values
    at a step; standard error ``s / sqrt(k)``, 0 where ``k = 1``, NaN with the mean where
    ``k = 0``). When the curves share no step (logged at other steps), they are instead
    linearly interpolated onto the union of their steps inside the range all of them cover
    (each curve's NaN points left out first). Empty arrays when there are no curves or their
    ranges do not overlap.

    >>> steps, mean, se = mean_curve([[(1, 1.0), (2, 2.0)], [(1, 3.0), (2, 4.0), (3, 5.0)]])
    >>> steps.tolist(), mean.tolist(), se.tolist()
    ([1, 2], [2.0, 3.0], [1.0, 1.0])
    """
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    if not curves:
        return empty
    points = [{int(step): float(value) for step, value in curve} for curve in curves]
    shared = sorted(set.intersection(*(set(p) for p in points)))
    if shared:
        steps = np.asarray(shared, np.int64)
        table = np.array([[p[s] for s in shared] for p in points], dtype=np.float64)
    else:
        finite = []
        for p in points:
            kept = sorted((s, v) for s, v in p.items() if math.isfinite(v))
            if not kept:
                return empty
            finite.append(np.asarray(kept, dtype=np.float64).T)  # (2, n): steps, values
        low = max(f[0, 0] for f in finite)
        high = min(f[0, -1] for f in finite)
        union = sorted({s for p in points for s in p if low <= s <= high})
        if not union:
            return empty
        steps = np.asarray(union, np.int64)
        table = np.array([np.interp(steps, f[0], f[1]) for f in finite])
    return (steps, *_mean_and_error(table))


def _mean_and_error(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise mean and standard error of ``table`` ``(runs, S)``, NaN left out."""
    ok = np.isfinite(table)
    k = ok.sum(axis=0)
    filled = np.where(ok, table, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / k
        squares = np.where(ok, (table - mean) ** 2, 0.0).sum(axis=0)
        error = np.sqrt(squares / (k - 1)) / np.sqrt(k)
    mean = np.where(k > 0, mean, np.nan)
    error = np.where(k > 1, error, np.where(k == 1, 0.0, np.nan))
    return mean, error


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased.

    .. math::

        m_t = w\\, m_{t-1} + (1 - w)\\, x_t, \\quad m_0 = 0, \\qquad
        \\hat m_t = m_t / (1 - w^{n_t})

    with :math:`n_t` the number of finite values so far, so the first points are not pulled
    towards 0. ``weight`` 0 gives the values back. A NaN (or infinite) value is skipped: the
    previous smoothed value is carried (NaN before the first finite value).

    Returns an array ``(len(values),)`` of float64.

    Raises:
        ValueError: ``weight`` is not a number in [0, 1).

    >>> ema([1.0, 2.0, float("nan"), 4.0], 0.5).round(4).tolist()  # .5/.5 1.25/.75 2.625/.875
    [1.0, 1.6667, 1.6667, 3.0]
    """
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float | np.floating | np.integer)
        or not 0.0 <= float(weight) < 1.0
    ):
        raise ValueError(
            f"weight must be a number in [0, 1) (0: no smoothing, 0.9: strong), got {weight!r}"
        )
    weight = float(weight)
    out = np.empty(len(values), dtype=np.float64)
    last, count, smoothed = 0.0, 0, math.nan
    for i, value in enumerate(values):
        value = float(value)
        if math.isfinite(value):
            last = weight * last + (1.0 - weight) * value
            count += 1
            smoothed = last / (1.0 - weight**count)
        out[i] = smoothed
    return out


# --- settings ------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_show(v) for v in value)
    if value is None:
        return "none"
    return str(value)


_MISSING = object()


def differing_settings(
    configs: Mapping[str, ExperimentConfig | Mapping[str, Any]],
) -> pd.DataFrame:
    """The settings in which the named configs differ.

    ``configs``: run name -> its config. Returns a frame with one row per config field whose
    values are not all equal (index ``setting``, in the config's field order) and one column
    per run (in the mapping's order); values are short strings (lists joined with ``", "``,
    ``None`` as ``"none"``; a field a config lacks as ``"(not set)"``). No rows when they all
    agree (or there are fewer than two).
    """
    fields = {name: _fields(config) for name, config in configs.items()}
    keys = list(dict.fromkeys(k for f in fields.values() for k in f))
    rows = {}
    for key in keys:
        values = [f.get(key, _MISSING) for f in fields.values()]
        if any(v != values[0] for v in values[1:]):
            rows[key] = ["(not set)" if v is _MISSING else _show(v) for v in values]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(fields))
    if frame.empty:
        frame = pd.DataFrame(columns=list(fields), dtype=object)
    frame.index.name = "setting"
    return frame


def repeat_configs(
    config: ExperimentConfig, n: int = 3, taken: Iterable[int] = ()
) -> list[ExperimentConfig]:
    """``n`` copies of ``config`` that differ only in ``seed``: the smallest seeds above
    ``config.seed`` that are neither its own nor in ``taken`` (e.g. the seeds of its group's
    runs), in increasing order. Each is submitted as its own job (a registry takes at most
    :data:`~mist_core.jobs.registry.MAX_QUEUED` waiting jobs by default).

    Raises:
        ValueError: ``n`` is not an integer >= 0, or there are not ``n`` free seeds below the
            config's limit.

    >>> [c.seed for c in repeat_configs(ExperimentConfig(seed=0), 3, taken=[2])]
    [1, 3, 4]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0 (how many repeats), got {n!r}")
    highest = int(LIMITS["seed"][1])
    used = {int(s) for s in taken} | {config.seed}
    seeds: list[int] = []
    seed = config.seed
    while len(seeds) < n:
        seed += 1
        if seed > highest:
            raise ValueError(
                f"not enough free seeds above {config.seed} (seeds go up to {highest}): "
                "start from a smaller seed"
            )
        if seed not in used:
            seeds.append(seed)
    return [dataclasses.replace(config, seed=s) for s in seeds]
