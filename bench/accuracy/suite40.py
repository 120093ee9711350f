"""BMI-40: the 40 tasks of the "Beyond Normal" benchmark, every seed, through ``estimate_mi``.

    python -m bench.accuracy --suite bmi40 --n 10000 --seeds 5
    python -m bench.accuracy --suite bmi40 --n 1000 --seeds 5 --variants auto,doe+gauss

Each (task, seed) draws N pairs from its own seed (the task's sampler, seeded), and each
variant estimates the MI from them with the default 50/50 split. ``auto`` is
``estimate_mi(x, y)`` with its defaults: it chooses its densities without the truth.
``auto-no-student`` is the same without the Student-t copula among its candidates (the
Student tasks of the benchmark are Student-t copulas, so this shows what the rest does
there). ``auto-ensemble`` is ``auto`` with an ensemble of two flows per flow candidate of q(y|x)
and each flow's averaged weights validated too (``AutoConfig(ensemble=2,
average_weights=True)``). The
single estimators are those of BMI-8 (:data:`bench.accuracy.bmi.BMI_ESTIMATORS`).

Rows are appended to a JSON-lines file as they finish (``--out``), so a long run can stop
and go on later; rows already there are not run again. ``--report`` runs nothing and
reports every row the file holds for that N (variants run with different seed counts). The
tables are printed, and written
to ``bench/README.md`` unless ``--no-readme``.

Figures: MAE is the mean over tasks and seeds of |estimate - truth| (each seed counts, so it
is at least the MAE of the seed-averaged estimates; one blown-up estimate dominates it, so
the median |error| is given too); a task is "within 0.1" when its mean
|error| over the seeds is at most 0.1 nats; coverage is the share of (task, seed) whose
truth lies within 1.96 standard errors of the estimate.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from bench.accuracy.bmi import BMI_ESTIMATORS, BMIBudget
from bench.accuracy.bmi40 import BMI40_FAMILY, BMI40_TASKS
from bench.record import environment, write_readme_block

__all__ = ["SUITE_VARIANTS", "run_suite", "summary_rows", "suite_report"]

HERE = Path(__file__).resolve().parent

#: Variants beyond BMI-8's single estimators.
SUITE_VARIANTS = ("auto", "auto-no-student", "auto-ensemble", *BMI_ESTIMATORS)

#: The field's published figures (MAE in nats over the 40 tasks), quoted by the issue.
PUBLISHED = {
    10_000: {"Alice": 0.060, "MINDE-C": 0.065, "InfoNCE": 0.083, "MINE": 0.108, "KSG": 0.219},
    1_000: {"Alice": 0.092, "CCA": 0.195, "MINE": 0.248, "MINDE-C": 0.353},
}


def _estimate(task: str, variant: str, n: int, seed: int) -> dict:
    """One row: the variant's estimate on the task's ``n`` samples of ``seed``."""
    from mist_core import estimate_mi
    from mist_core.training.auto import AutoConfig

    sampler = BMI40_TASKS[task]()
    x, y = sampler.sample(n, torch.Generator().manual_seed(seed))
    truth = sampler.mutual_information()
    start = time.perf_counter()
    chosen, warnings = variant, []
    try:
        if variant.startswith("auto"):
            ensemble = variant == "auto-ensemble"
            config = AutoConfig(
                student=variant != "auto-no-student",
                ensemble=2 if ensemble else 1,
                average_weights=ensemble,
            )
            result = estimate_mi(x, y, device="cpu", seed=seed, auto=config)
            chosen = result.estimator
        else:
            estimator, marginals, options = BMI_ESTIMATORS[variant]
            budget = BMIBudget(samples=n)
            result = estimate_mi(
                x,
                y,
                estimator,
                max_iterations=budget.steps,
                batch_size=min(budget.batch_size, n // 4),
                lr=budget.lr,
                standardize=marginals,
                device="cpu",
                seed=seed,
                estimator_options=options,
            )
        estimate, error = result.mi, result.std_error
        warnings = list(getattr(result, "warnings", ()))
    except FloatingPointError:
        estimate, error = math.nan, math.nan
    return {
        "task": task,
        "family": BMI40_FAMILY[task],
        "variant": variant,
        "n": n,
        "seed": seed,
        "true": truth,
        "estimate": estimate,
        "std_error": error,
        "error": estimate - truth,
        "chosen": chosen,
        "seconds": time.perf_counter() - start,
        "warnings": warnings,
    }


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _done(path: Path) -> dict[tuple, dict]:
    rows: dict[tuple, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["task"], row["variant"], row["n"], row["seed"])] = row
    return rows


def run_suite(
    out: Path,
    n: int,
    seeds: Sequence[int],
    variants: Sequence[str],
    tasks: Sequence[str] | None = None,
    workers: int = 1,
    threads: int = 1,
    on_row=None,  # noqa: ANN001 - a callback(row)
) -> list[dict]:
    """Run what ``out`` does not hold yet; return every row of this (n, seeds, variants)."""
    tasks = list(tasks or BMI40_TASKS)
    done = _done(out)
    todo = [
        (task, variant, n, seed)
        for seed in seeds
        for task in tasks
        for variant in variants
        if (task, variant, n, seed) not in done
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as sink:
        if workers <= 1:
            torch.set_num_threads(threads)
            results = (_estimate(*job) for job in todo)
            for row in results:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                done[(row["task"], row["variant"], n, row["seed"])] = row
                if on_row:
                    on_row(row)
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(threads,)) as ex:
                futures = [ex.submit(_estimate, *job) for job in todo]
                for future in as_completed(futures):
                    row = future.result()
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    done[(row["task"], row["variant"], n, row["seed"])] = row
                    if on_row:
                        on_row(row)
    return [
        done[(task, variant, n, seed)]
        for seed in seeds
        for task in tasks
        for variant in variants
        if (task, variant, n, seed) in done
    ]


def summary_rows(rows: Sequence[dict]) -> list[dict]:
    """Per variant: MAE, tasks within 0.1, coverage, seconds (median and max per task)."""
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    out = []
    for variant, group in by_variant.items():
        finite = [r for r in group if math.isfinite(r["estimate"])]
        per_task: dict[str, list[float]] = defaultdict(list)
        for r in group:
            per_task[r["task"]].append(abs(r["error"]) if math.isfinite(r["error"]) else math.inf)
        covered = [
            abs(r["error"]) <= 1.96 * r["std_error"]
            for r in finite
            if math.isfinite(r["std_error"])
        ]
        seconds = [r["seconds"] for r in group]
        out.append(
            {
                "variant": variant,
                "rows": len(group),
                "tasks": len(per_task),
                "seeds": len({r["seed"] for r in group}),
                "mae": statistics.fmean(min(abs(r["error"]), 1e9) for r in finite)
                if finite
                else math.nan,
                "median_abs_error": statistics.median(abs(r["error"]) for r in finite)
                if finite
                else math.nan,
                "non_finite": len(group) - len(finite),
                "within_0.1": sum(statistics.fmean(v) <= 0.1 for v in per_task.values()),
                "coverage": statistics.fmean(covered) if covered else math.nan,
                "median_seconds": statistics.median(seconds),
                "max_seconds": max(seconds),
            }
        )
    return sorted(out, key=lambda r: r["mae"] if math.isfinite(r["mae"]) else math.inf)


def _nats(value: float) -> str:
    """``0.039``, or ``2.4e+06`` for a blown-up mean."""
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.2g}"


def _summary_table(summary: Sequence[dict]) -> str:
    lines = [
        "| variant | tasks x seeds | MAE (nats) | median abs(error) | tasks within 0.1 "
        "| coverage of ±1.96 s.e. | s per task (median / max) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        nonfinite = f" ({s['non_finite']} non-finite)" if s["non_finite"] else ""
        lines.append(
            f"| {s['variant']} | {s['tasks']} x {s['seeds']} | {_nats(s['mae'])}{nonfinite} "
            f"| {s['median_abs_error']:.3f} | {s['within_0.1']} / {s['tasks']} "
            f"| {s['coverage']:.0%} "
            f"| {s['median_seconds']:.1f} / {s['max_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _task_table(rows: Sequence[dict], variant: str) -> str:
    per_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["variant"] == variant:
            per_task[r["task"]].append(r)
    lines = [
        f"| task | family | true MI | mean estimate | mean abs(error) | s.e. | chosen ({variant}) "
        "| s |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for task in BMI40_TASKS:
        group = per_task.get(task)
        if not group:
            continue
        estimates = [r["estimate"] for r in group]
        chosen = Counter(r["chosen"] for r in group).most_common()
        chosen_text = ", ".join(f"{name} x{c}" if c > 1 else name for name, c in chosen)
        lines.append(
            f"| {task} | {group[0]['family']} | {group[0]['true']:.3f} "
            f"| {statistics.fmean(estimates):.3f} "
            f"| {statistics.fmean(abs(r['error']) for r in group):.3f} "
            f"| {statistics.fmean(r['std_error'] for r in group):.3f} | {chosen_text} "
            f"| {statistics.fmean(r['seconds'] for r in group):.1f} |"
        )
    return "\n".join(lines)


def _family_table(rows: Sequence[dict], variant: str) -> str:
    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["variant"] == variant and math.isfinite(r["error"]):
            by_family[r["family"]].append(r)
    lines = ["| family | tasks | MAE | coverage |", "|---|---:|---:|---:|"]
    for family, group in sorted(by_family.items()):
        covered = [abs(r["error"]) <= 1.96 * r["std_error"] for r in group]
        lines.append(
            f"| {family} | {len({r['task'] for r in group})} "
            f"| {statistics.fmean(abs(r['error']) for r in group):.3f} "
            f"| {statistics.fmean(covered):.0%} |"
        )
    return "\n".join(lines)


def suite_report(rows: Sequence[dict], n: int, command: str, cpu: str) -> str:
    """The README section for one N."""
    summary = summary_rows(rows)
    published = ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED.get(n, {}).items())
    parts = [
        f"`{command}` ({time.strftime('%Y-%m-%d')}): {environment(threads=False)}; {cpu}.",
        f"N = {n}. The single estimators hold half the samples out (BMI's 50/50 split); "
        "`auto` cross-fits over 5 folds, or refits a closed form on all samples. Published "
        f"MAE at this N (5 seeds, per-task tuning allowed): {published or 'none quoted'}.",
        _summary_table(summary),
    ]
    if any(r["variant"] == "auto" for r in rows):
        parts += [
            "`auto` by task (chosen = the densities it picked, per seed):",
            _task_table(rows, "auto"),
            "`auto` by family:",
            _family_table(rows, "auto"),
        ]
    return "\n\n".join(parts)


def main(args) -> int:  # noqa: ANN001 - the argparse namespace of bench.accuracy
    from bench.machine import cpu_model

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in SUITE_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; valid: {', '.join(SUITE_VARIANTS)}")
    keys = [k for k in args.tasks.split(",") if k]
    tasks = [t for t in BMI40_TASKS if not keys or any(k in t for k in keys)]
    seeds = list(range(args.seeds))
    out = args.out or HERE / "results" / f"bmi40-n{args.n}.jsonl"
    command = (
        f"python -m bench.accuracy --suite bmi40 --n {args.n} --seeds {args.seeds} "
        f"--variants {','.join(variants)} --workers {args.workers}"
    )
    cpu = cpu_model()
    print(f"{command}\n{environment(threads=False)}; {cpu}; {os.cpu_count()} cores", flush=True)

    def show(row: dict) -> None:
        print(
            f"{row['task']:50s} seed {row['seed']} {row['variant']:16s} true {row['true']:.3f} "
            f"est {row['estimate']:.3f} ± {row['std_error']:.3f} err {row['error']:+.3f} "
            f"{row['seconds']:.1f}s {row['chosen']}",
            flush=True,
        )

    if args.report:  # every row the file holds for this N, nothing run
        rows = [r for r in _done(out).values() if r["n"] == args.n]
        command = f"python -m bench.accuracy --suite bmi40 --n {args.n} --report"
        counts = Counter(r["variant"] for r in rows)
        complete = all(count % 40 == 0 for count in counts.values()) and bool(rows)
    else:
        rows = run_suite(
            out, args.n, seeds, variants, tasks, args.workers, args.suite_threads, show
        )
        complete = len(rows) == len(tasks) * len(seeds) * len(variants) and len(tasks) == 40
    report = suite_report(rows, args.n, command, cpu)
    print("\n" + report)
    if not args.no_readme and complete:
        write_readme_block(f"accuracy-bmi40-n{args.n}", report)
        print("wrote bench/README.md")
    elif not complete:
        print(f"(partial: {len(rows)} rows; the README is written only for all 40 tasks)")
    return 0
