"""The staircase on a fixed dataset: one data set per MI level, each estimator at its defaults.

    python -m bench.accuracy.fixed_staircase
    python -m bench.accuracy.fixed_staircase --n 30000 --levels 2,4,6,8,10 --estimators auto,doe
    python -m bench.accuracy.fixed_staircase --n 600 --levels 2 --estimators auto --no-readme

The training staircase (:mod:`bench.accuracy.staircase`) draws fresh samples at every step,
which no user has. Here each level is ONE data set of N pairs of a ``dim``-d correlated
Gaussian (:class:`bench.accuracy.samplers.CorrelatedGaussian`, each coordinate pair with
correlation rho, -d/2 log(1 - rho^2) = the level), drawn once from a seeded generator,
and every estimator sees it through ``estimate_mi(x, y, name, device="cpu")`` with nothing
else set: its defaults, its 50/50 split (or, for ``auto``, its own folds).

Acceptance (issue 16): DoE and auto within max(0.25, 3% of the level) of the truth at every
level. The table (level, estimator, estimate, s.e., error, within, what auto chose, seconds)
is printed, written to the ``accuracy-fixed-staircase`` block of ``bench/README.md`` (unless
``--no-readme``) and its rows to ``bench/accuracy/results/fixed-staircase.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.accuracy.samplers import CorrelatedGaussian
from bench.machine import cpu_model
from bench.record import README, environment, write_readme_block

__all__ = [
    "DEFAULT_LEVELS",
    "RESULTS",
    "checks",
    "level_data",
    "level_seed",
    "main",
    "run_level",
    "table",
    "tolerance",
]

HERE = Path(__file__).resolve().parent
#: Where the rows go as JSON (``--json`` overrides).
RESULTS = HERE / "results" / "fixed-staircase.json"
DEFAULT_LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)


def tolerance(level: float) -> float:
    """The issue's bound on |error| at a level: max(0.25, 3% of the level), in nats."""
    return max(0.25, 0.03 * level)


def level_seed(seed: int, level: float) -> int:
    """The generator seed of one level's data set: each level has its own draw, and it does
    not depend on which other levels are run."""
    return 1000 * seed + round(100 * level)


def level_data(
    n: int, dim: int, level: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One level's fixed data set: ``x: [n, dim]``, ``y: [n, dim]`` (float32) and the true MI
    in nats (= ``level`` up to rounding)."""
    sampler = CorrelatedGaussian.with_mi(dim, level)
    x, y = sampler.sample(n, torch.Generator().manual_seed(level_seed(seed, level)))
    return x, y, sampler.mutual_information()


def run_level(
    x: torch.Tensor, y: torch.Tensor, truth: float, level: float, estimator: str, seed: int
) -> dict:
    """One row: ``estimate_mi(x, y, estimator, device="cpu", seed=seed)`` on one level's data
    ``x: [n, d]``, ``y: [n, d]``, timed; an exception becomes a row with a NaN estimate and
    its message in ``failed``."""
    from mist_core import estimate_mi

    start = time.perf_counter()
    failed = ""
    try:
        result = estimate_mi(x, y, estimator, device="cpu", seed=seed)
        estimate, std_error = float(result.mi), float(result.std_error)
        chosen, warnings = result.estimator, list(result.warnings)
        reason = str(result.details.get("reason", ""))
    except Exception as exc:  # noqa: BLE001 - one failure must not end the benchmark
        estimate = std_error = math.nan
        chosen, warnings, reason = estimator, [], ""
        failed = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    error = estimate - truth
    return {
        "level": level,
        "true": truth,
        "n": len(x),
        "dim": x.shape[1],
        "seed": seed,
        "estimator": estimator,
        "estimate": estimate,
        "std_error": std_error,
        "error": error,
        "tolerance": tolerance(level),
        "within": bool(math.isfinite(error) and abs(error) <= tolerance(level)),
        "chosen": chosen,
        "reason": reason,
        "seconds": seconds,
        "warnings": warnings,
        "failed": failed,
    }


def table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| level | estimator | estimate | s.e. | error | within max(0.25, 3%) | chosen "
        "| seconds |",
        "|---:|---|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        chosen = r["chosen"] + (f" (failed: {r['failed']})" if r["failed"] else "")
        chosen = chosen.replace("|", "\\|")  # q(y|x) would split the cell
        lines.append(
            f"| {r['level']:g} | {r['estimator']} | {r['estimate']:.3f} | {r['std_error']:.3f} "
            f"| {r['error']:+.3f} | {'yes' if r['within'] else '**no**'} | {chosen} "
            f"| {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def checks(rows: Sequence[dict]) -> list[dict]:
    """Per estimator: within max(0.25, 3%) at every level? With the errors it was judged on."""
    out = []
    for name in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == name]
        errors = ", ".join(f"{r['level']:g}: {r['error']:+.3f}" for r in mine)
        out.append(
            {
                "criterion": f"{name} within max(0.25, 3% of I) at every level",
                "measured": errors,
                "ok": all(r["within"] for r in mine),
            }
        )
    return out


def _checks_table(items: Sequence[dict]) -> str:
    lines = ["| criterion | errors by level | holds |", "|---|---|---|"]
    lines += [
        f"| {c['criterion']} | {c['measured']} | {'yes' if c['ok'] else '**no**'} |" for c in items
    ]
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None, on_row: Callable[[dict], None] | None = None) -> int:
    """Run the levels x estimators, print the table and checks, write JSON and README."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy.fixed_staircase",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=30_000, help="pairs in each level's data set")
    parser.add_argument("--dim", type=int, default=20, help="dimension of x and of y")
    parser.add_argument(
        "--levels", default="2,4,6,8,10", help="true MI of each level, nats (comma-separated)"
    )
    parser.add_argument("--seed", type=int, default=0, help="data and estimator seed")
    parser.add_argument(
        "--estimators", default="auto,doe", help="comma-separated names for estimate_mi"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the rows go")
    parser.add_argument("--no-readme", action="store_true", help="do not touch bench/README.md")
    args = parser.parse_args(argv)
    levels, estimators = _floats(args.levels), _names(args.estimators)
    torch.set_num_threads(args.threads)

    command = "python -m bench.accuracy.fixed_staircase " + shlex.join(
        [
            *("--n", str(args.n), "--dim", str(args.dim), "--levels", args.levels),
            *("--seed", str(args.seed), "--estimators", ",".join(estimators)),
            *(("--threads", str(args.threads)) if args.threads != 2 else ()),
        ]
    )
    date = time.strftime("%Y-%m-%d")
    header = f"`{command}` ({date}): {environment()}; {cpu_model()}."
    print(header, flush=True)
    start = time.perf_counter()
    rows: list[dict] = []
    print(table([]), flush=True)
    for level in levels:
        x, y, truth = level_data(args.n, args.dim, level, args.seed)
        for name in estimators:
            row = run_level(x, y, truth, level, name, args.seed)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            if on_row:
                on_row(row)
    elapsed = time.perf_counter() - start
    items = checks(rows)
    text = "\n\n".join(
        [
            header,
            f"One fixed data set per level: N = {args.n} pairs of a {args.dim}-d correlated "
            f"Gaussian (each coordinate pair with correlation rho, -d/2 log(1 - rho^2) = the "
            f"level), drawn once (generator seed 1000 * seed + 100 * level); each estimator "
            f'through `estimate_mi(x, y, name, device="cpu", seed={args.seed})` at its '
            "defaults. Within: |error| <= max(0.25, 3% of the level).",
            table(rows),
            _checks_table(items),
            f"Total: {elapsed / 60:.1f} min.",
        ]
    )
    print("\n" + text)
    warned = [r for r in rows if r["warnings"]]
    for r in warned:
        print(f"warnings, level {r['level']:g}, {r['estimator']}: " + " | ".join(r["warnings"]))
    report = {
        "command": command,
        "date": date,
        "environment": environment(),
        "cpu": cpu_model(),
        "rows": rows,
        "checks": items,
        "seconds": elapsed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    if not args.no_readme:
        write_readme_block("accuracy-fixed-staircase", text)
        print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
