"""BMI-8: eight tasks of the "Beyond Normal" benchmark (Czyz et al., NeurIPS 2023).

Each task draws N = 5,000 pairs (seeded), holds half out for the estimate (BMI's 50/50
split) and runs every estimator through :func:`mist_core.estimate_mi`. An estimator
variant is an estimator name plus the marginal map it sees the data through:
``doe`` standardises, ``doe+gauss`` Gaussianises each coordinate (an invertible map fitted
on the training half; see :mod:`mist_core.marginals`). The table reports every variant and
an oracle: the best of them per task, picked with the truth (as BMI's leaderboard does for
its own estimators).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bench.accuracy.samplers import BMI_TASKS
from mist_core import estimate_mi

__all__ = ["BMI_ESTIMATORS", "BMIBudget", "best_per_task", "run_bmi", "variant"]

_SPLINES = {
    "transform_name": "conditional_spline_autoregressive",
    "marginal_transform_name": "spline_autoregressive",
    "n_transforms": 2,
}

#: The variants run by default: name -> (estimator, marginal map, estimator options).
BMI_ESTIMATORS: dict[str, tuple[str, bool | str, dict]] = {
    "doe": ("doe", True, {}),
    "doe+gauss": ("doe", "gaussianize", {}),
    "doe-spline": ("doe", True, _SPLINES),
    "doe-spline+gauss": ("doe", "gaussianize", _SPLINES),
    "gaussian+gauss": ("gaussian", "gaussianize", {}),
    "infonce": ("infonce", True, {"critic": "separable"}),
    "smile": ("smile", True, {"critic": "separable"}),
    "smile+gauss": ("smile", "gaussianize", {"critic": "separable"}),
    "nwj": ("nwj", True, {"critic": "separable"}),
    "mine": ("mine", True, {"critic": "separable"}),
    "js": ("js", True, {"critic": "separable"}),
}


@dataclass(frozen=True)
class BMIBudget:
    samples: int = 5_000
    steps: int = 3_000
    batch_size: int = 128
    lr: float = 1e-3


def variant(name: str) -> tuple[str, bool | str, dict]:
    if name not in BMI_ESTIMATORS:
        raise ValueError(f"unknown BMI variant {name!r}; valid: {', '.join(BMI_ESTIMATORS)}")
    return BMI_ESTIMATORS[name]


def run_bmi(
    budget: BMIBudget,
    variants: Sequence[str],
    seed: int,
    tasks: Sequence[str] | None = None,
    on_row=None,  # noqa: ANN001 - a callback(row) to print as the rows come
) -> list[dict]:
    """One row per (task, variant): truth, estimate, standard error, error, steps, seconds."""
    rows = []
    for task in tasks or BMI_TASKS:
        sampler = BMI_TASKS[task]()
        x, y = sampler.sample(budget.samples, torch.Generator().manual_seed(seed))
        truth = sampler.mutual_information()
        for name in variants:
            estimator, marginals, options = variant(name)
            start = time.perf_counter()
            try:
                result = estimate_mi(
                    x,
                    y,
                    estimator,
                    max_iterations=budget.steps,
                    batch_size=budget.batch_size,
                    lr=budget.lr,
                    test_fraction=0.5,
                    standardize=marginals,
                    device="cpu",
                    seed=seed,
                    estimator_options=options,
                )
                estimate, error, steps = result.mi, result.std_error, result.log.attrs["steps"]
            except FloatingPointError:
                estimate, error, steps = float("nan"), float("nan"), "diverged"
            row = {
                "task": task,
                "estimator": name,
                "true": truth,
                "estimate": estimate,
                "std_error": error,
                "error": estimate - truth,
                "steps": steps,
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def best_per_task(rows: Sequence[dict]) -> list[dict]:
    """For each task, the variant whose finite estimate is closest to the truth."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["estimate"] != row["estimate"]:  # NaN
            continue
        current = best.get(row["task"])
        if current is None or abs(row["error"]) < abs(current["error"]):
            best[row["task"]] = row
    return list(best.values())
