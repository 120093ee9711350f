"""Accuracy of every estimator on Gaussian tasks with known MI.

    python -m bench.accuracy            # 5-d tasks, batch 128, 2,000 steps, 100,000 samples
    python -m bench.accuracy --quick    # the same tasks, reduced (under 2 minutes)
    python -m bench.accuracy --write-readme   # also record the table in bench/README.md

Tasks: x and y 5-d correlated Gaussians with I = 1, 2, 4 nats, and the 2-nat task after
x -> asinh(3x) and y -> y^3 (invertible maps: the MI is unchanged). Every estimator runs
through :func:`mist_core.estimate_mi` (half the samples held out for the estimate), with
its default networks; BA is given the true H(Y). Discriminative estimators use separable
critics here, which cost N instead of N^2 network evaluations per batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import mist_core
from bench.accuracy.samplers import CorrelatedGaussian, Transformed, asinh3, cube
from mist_core import ESTIMATORS, estimate_mi

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"
DISCRIMINATIVE = {"nwj", "mine", "infonce", "js", "smile"}


@dataclass(frozen=True)
class Budget:
    samples: int
    steps: int
    batch_size: int = 128


FULL = Budget(samples=100_000, steps=2_000)
QUICK = Budget(samples=4_000, steps=100)


def tasks() -> dict[str, Transformed]:
    gaussians = {mi: CorrelatedGaussian.with_mi(5, mi) for mi in (1.0, 2.0, 4.0)}
    out = {f"gauss-5d-{mi:g}nat": Transformed(g) for mi, g in gaussians.items()}
    out["asinh(3x)-5d-2nat"] = Transformed(gaussians[2.0], fx=asinh3)
    out["cube(y)-5d-2nat"] = Transformed(gaussians[2.0], fy=cube)
    return out


def run(
    budget: Budget, estimators: list[str], seed: int, only: list[str] | None = None
) -> list[dict]:
    rows = []
    for task_name, sampler in tasks().items():
        if only and not any(word in task_name for word in only):
            continue
        x, y = sampler.sample(budget.samples, torch.Generator().manual_seed(seed))
        truth = sampler.mutual_information()
        for name in estimators:
            options: dict = {}
            if name == "ba":
                options["entropy_y"] = sampler.entropy_y()
            if name in DISCRIMINATIVE:
                options["critic"] = "separable"
            start = time.perf_counter()
            try:
                result = estimate_mi(
                    x,
                    y,
                    name,
                    max_iterations=budget.steps,
                    batch_size=budget.batch_size,
                    device="cpu",
                    seed=seed,
                    estimator_options=options,
                )
            except FloatingPointError as error:  # a diverged estimator is a result too
                step = re.search(r"at step (\d+)", str(error))
                row = {
                    "task": task_name,
                    "estimator": name,
                    "true": truth,
                    "estimate": float("nan"),
                    "std_error": float("nan"),
                    "error": float("nan"),
                    "steps": f"diverged at {step.group(1) if step else '?'}",
                    "seconds": time.perf_counter() - start,
                }
            else:
                row = {
                    "task": task_name,
                    "estimator": name,
                    "true": truth,
                    "estimate": result.mi,
                    "std_error": result.std_error,
                    "error": result.mi - truth,
                    "steps": result.log.attrs["steps"],
                    "seconds": time.perf_counter() - start,
                }
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


def _header() -> str:
    return (
        "| task | estimator | true MI | estimate | ± s.e. | error | steps | seconds |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )


def _format_row(row: dict) -> str:
    return (
        f"| {row['task']} | {row['estimator']} | {row['true']:.3f} | {row['estimate']:.3f} "
        f"| {row['std_error']:.3f} | {row['error']:+.3f} | {row['steps']} | {row['seconds']:.1f} |"
    )


def environment() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"mist_core {mist_core.__version__}, Python {platform.python_version()}"
    )


def write_readme(table: str, label: str) -> None:
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    block = f"{BEGIN}\n{label}\n\n{table}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += f"\n{block}\n"
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="reduced budget (under 2 minutes)")
    parser.add_argument(
        "--estimators", default=",".join(ESTIMATORS), help="comma-separated subset (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tasks",
        default="",
        help="comma-separated words; run the tasks whose names contain one (default: all)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--write-readme", action="store_true", help="record the table in bench/README.md"
    )
    args = parser.parse_args(argv)
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    unknown = sorted(set(estimators) - set(ESTIMATORS))
    if unknown:
        parser.error(f"unknown estimator(s) {unknown}; valid: {', '.join(ESTIMATORS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    flags = (" --quick" if args.quick else "") + (
        f" --threads {args.threads}" if args.threads else ""
    )
    label = (
        f"`python -m bench.accuracy{flags} --seed {args.seed}`: "
        f"{budget.samples} samples (half held out), batch {budget.batch_size}, "
        f"up to {budget.steps} steps with early stopping. {environment()}."
    )
    print(label)
    print(_header(), flush=True)
    start = time.perf_counter()
    only = [t.strip() for t in args.tasks.split(",") if t.strip()]
    rows = run(budget, estimators, args.seed, only)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.write_readme:
        write_readme("\n".join([_header(), *map(_format_row, rows)]), label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
