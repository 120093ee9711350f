"""A new user's cases (issue 16): ``estimate_mi(x, y)`` at its defaults against the old default.

    python -m bench.accuracy.examples                       # N = 10,000, 3 seeds
    python -m bench.accuracy.examples --n 600 --n-large 600 --seeds 1 --estimators auto \\
        --no-readme                                         # a smoke run

Each case has a closed-form truth. Every seed draws its own samples (the fixed matrices of
cases b and e do not change with the seed); each is estimated by ``estimate_mi(x, y)`` with
its defaults (``estimator="auto"``) and by ``estimate_mi(x, y, "doe")`` (the old default),
both with ``device="cpu"`` and ``seed`` = the seed, each call timed with
``time.perf_counter`` on ``--threads`` torch threads (2 by default).

a. heavy-tailed target: ``x ~ N(0, 1)``, ``z = rho x + sqrt(1 - rho^2) e`` with
   ``-1/2 log(1 - rho^2) = 1``, ``y = z^3``. True MI 1.00 nats.
b. 64-d inputs carrying 3.00 nats into a 2-d target in pixel units: ``y ~ N(0, I_2)``,
   ``x = W y + noise`` (``noise ~ N(0, I_64)``), then a fixed random rotation of x;
   ``y_pix = 100 + 30 y``. ``W`` is a fixed random ``[64, 2]`` matrix scaled so that
   ``1/2 log det(I_2 + W^T W) = 3.00`` exactly (:class:`PixelTarget`). Also the timing
   case: the defaults should never take more than 2 minutes for N = 10,000 on 2 cores.
c. a smooth invertible warp of x: a bivariate normal (1-d each) at 1.50 nats, x mapped by
   the strictly increasing ``sinh(x) + x``; y unchanged. True MI 1.50.
d. a 20-d correlated Gaussian at 8.00 nats, N = 30,000 (``--n-large``).
e. Student-t with coupled non-linear mixing: ``StudentT(2, 2, dof=1)`` (identity
   dispersion: X and Y share only the chi-square scale), x mixed by a fixed invertible 2x2
   matrix and then ``asinh`` coordinate-wise, y likewise with another matrix. Invertible
   maps on each side: the MI is StudentT's, 0.4319 nats. The Gaussian copula of this pair
   sees (almost) no dependence; a linear map of a Student-t is a Student-t, so the pair's
   copula is a Student-t copula.
f. JS on a Student task: ``estimate_mi(x, y, "js", estimator_options={"critic":
   "separable"})`` on ``StudentT(5, 5, dof=2)`` (N = ``--n``; true 0.4482). The issue saw
   "-7,591 nats with no warning"; the estimate and the warnings it carries are reported as
   they come, seed by seed (it may or may not blow up on a given seed).

The tables are printed, written to the ``accuracy-examples`` block of ``bench/README.md``
(unless ``--no-readme``), and every row to ``bench/accuracy/results/examples.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.accuracy.samplers import (
    CorrelatedGaussian,
    Sampler,
    StudentT,
    Transformed,
    cube,
    identity,
)
from bench.machine import cpu_model
from bench.record import README, environment, write_readme_block

__all__ = [
    "CASES",
    "JS_CASE",
    "RESULTS",
    "TIME_LIMIT_S",
    "Case",
    "LinearThenAsinh",
    "PixelTarget",
    "data_seed",
    "main",
    "run_case",
    "sinh_warp",
    "summary_table",
]

HERE = Path(__file__).resolve().parent
#: Where the rows go as JSON (``--json`` overrides).
RESULTS = HERE / "results" / "examples.json"
#: The issue's limit on the defaults for N = 10,000 and 64-d x on 2 CPU cores, seconds.
TIME_LIMIT_S = 120.0


# -- the cases' samplers ----------------------------------------------------------------------


@dataclass(frozen=True)
class PixelTarget:
    r"""Case b: ``y ~ N(0, I_{dim_y})``, ``x = R (W y + noise * e)`` with ``e ~ N(0, I)``,
    ``R`` a fixed random rotation ``[dim_x, dim_x]`` and ``W`` a fixed random ``[dim_x,
    dim_y]`` matrix scaled so that :math:`\frac12 \log\det(I + W^T W / s^2)` = ``mi``
    (``s`` = ``noise``); the target is returned in pixel units, ``offset + pixels * y``.

    Neither the rotation nor the affine map of y changes the MI, so it is
    :math:`\frac12 \log\det(I + W^T W / s^2)` exactly (:meth:`mutual_information`), the
    Gaussian MI of :meth:`joint_covariance`. ``matrix_seed`` fixes ``W`` and ``R``.
    """

    dim_x: int = 64
    dim_y: int = 2
    mi: float = 3.0
    noise: float = 1.0
    offset: float = 100.0
    pixels: float = 30.0
    matrix_seed: int = 16

    @cached_property
    def _raw(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.matrix_seed)
        w = rng.standard_normal((self.dim_x, self.dim_y))
        q, r = np.linalg.qr(rng.standard_normal((self.dim_x, self.dim_x)))
        return w, q * np.sign(np.diag(r))  # Haar-distributed rotation

    @cached_property
    def scale(self) -> float:
        r"""``c`` with :math:`\frac12 \sum_i \log(1 + c^2 \lambda_i / s^2)` = ``mi``, the
        :math:`\lambda_i` the eigenvalues of ``W0^T W0`` (bisection to float precision)."""
        eig = np.linalg.eigvalsh(self._raw[0].T @ self._raw[0]) / self.noise**2

        def mi(c: float) -> float:
            return 0.5 * float(np.log1p(c * c * eig).sum())

        low, high = 0.0, 1.0
        while mi(high) < self.mi:
            high *= 2.0
        for _ in range(200):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if mi(mid) < self.mi else (low, mid)
        return 0.5 * (low + high)

    @property
    def weights(self) -> np.ndarray:
        """``W``, ``[dim_x, dim_y]``."""
        return self.scale * self._raw[0]

    @property
    def rotation(self) -> np.ndarray:
        """``R``, orthogonal ``[dim_x, dim_x]``."""
        return self._raw[1]

    def mutual_information(self) -> float:
        r""":math:`\frac12 \log\det(I + W^T W / s^2)` in nats."""
        w = self.weights
        return 0.5 * float(np.linalg.slogdet(np.eye(self.dim_y) + w.T @ w / self.noise**2)[1])

    def joint_covariance(self) -> np.ndarray:
        """The covariance of ``[x, y_pix]``, ``[dim_x + dim_y, dim_x + dim_y]``."""
        w, r = self.weights, self.rotation
        sxx = r @ (w @ w.T + self.noise**2 * np.eye(self.dim_x)) @ r.T
        sxy = self.pixels * (r @ w)
        syy = self.pixels**2 * np.eye(self.dim_y)
        return np.block([[sxx, sxy], [sxy.T, syy]])

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs: ``x: [n, dim_x]``, ``y: [n, dim_y]`` in pixels (drawn in float64)."""
        y = torch.randn(n, self.dim_y, generator=generator, dtype=torch.float64)
        e = torch.randn(n, self.dim_x, generator=generator, dtype=torch.float64)
        w = torch.as_tensor(self.weights)
        r = torch.as_tensor(self.rotation)
        x = (y @ w.T + self.noise * e) @ r.T
        return x.to(dtype), (self.offset + self.pixels * y).to(dtype)


def sinh_warp(t: Tensor) -> Tensor:
    """Case c's warp ``sinh(t) + t``, elementwise (any shape): strictly increasing, its
    derivative ``cosh(t) + 1 >= 2``."""
    return torch.sinh(t) + t


@dataclass(frozen=True)
class LinearThenAsinh:
    """``t: [n, k]`` -> ``asinh(t M^T)``: a fixed invertible mixing, then ``asinh`` on every
    coordinate (an injective map, so the MI does not change). ``matrix``: ``[k, k]``."""

    matrix: tuple[tuple[float, ...], ...]

    def __call__(self, t: Tensor) -> Tensor:
        m = torch.as_tensor(self.matrix, dtype=t.dtype)
        return torch.asinh(t @ m.T)


#: Case e's mixing matrices (determinants 1.28 and 1.30).
MIX_X = ((1.0, 0.7), (-0.4, 1.0))
MIX_Y = ((1.0, -0.6), (0.5, 1.0))


@dataclass(frozen=True)
class Case:
    """One example: ``build()`` gives the sampler (``sample(n, generator)``,
    ``mutual_information()``); ``large`` cases use ``--n-large`` samples instead of ``--n``;
    ``estimator_options`` go to every estimator of the case (for ``js``: the critic)."""

    key: str
    title: str
    build: Callable[[], Sampler] = field(repr=False)
    large: bool = False
    estimators: tuple[str, ...] | None = None
    estimator_options: dict = field(default_factory=dict)


CASES: dict[str, Case] = {
    "a": Case(
        "a",
        "heavy-tailed target y = z^3 (1-d)",
        lambda: Transformed(CorrelatedGaussian.with_mi(1, 1.0), identity, cube),
    ),
    "b": Case("b", "64-d x, 2-d target in pixels", PixelTarget),
    "c": Case(
        "c",
        "warped x: sinh(x) + x (1-d)",
        lambda: Transformed(CorrelatedGaussian.with_mi(1, 1.5), sinh_warp, identity),
    ),
    "d": Case("d", "20-d Gaussian at 8 nats", lambda: CorrelatedGaussian.with_mi(20, 8.0), True),
    "e": Case(
        "e",
        "Student-t (2, 2, dof 1), mixed, asinh",
        lambda: Transformed(
            StudentT(2, 2, dof=1.0), LinearThenAsinh(MIX_X), LinearThenAsinh(MIX_Y)
        ),
    ),
}
#: Case f: JS with a separable critic on a Student task, on its own.
JS_CASE = Case(
    "f",
    "JS (separable critic) on Student-t (5, 5, dof 2)",
    lambda: StudentT(5, 5, dof=2.0),
    estimators=("js",),
    estimator_options={"critic": "separable"},
)


def data_seed(key: str, seed: int) -> int:
    """The generator seed of a case's samples for ``seed``: distinct per case, so cases that
    share a base sampler (a and c) do not share their draws."""
    return 1000 * seed + ord(key)


# -- running ----------------------------------------------------------------------------------


def run_case(case: Case, n: int, seed: int, estimator: str) -> dict:
    """One row: ``estimate_mi`` (``estimator`` at its defaults plus the case's options,
    ``device="cpu"``, ``seed``) on the case's ``n`` samples of ``seed``, timed; an exception
    becomes a NaN estimate with its message in ``failed``."""
    from mist_core import estimate_mi

    sampler = case.build()
    x, y = sampler.sample(n, torch.Generator().manual_seed(data_seed(case.key, seed)))
    truth = sampler.mutual_information()
    options = {"estimator_options": case.estimator_options} if case.estimator_options else {}
    failed = ""
    start = time.perf_counter()
    try:
        if estimator == "auto":  # exactly what a new user types
            result = estimate_mi(x, y, device="cpu", seed=seed, **options)
        else:
            result = estimate_mi(x, y, estimator, device="cpu", seed=seed, **options)
        estimate, std_error = float(result.mi), float(result.std_error)
        chosen, warnings = result.estimator, list(result.warnings)
        reason = str(result.details.get("reason", ""))
    except Exception as exc:  # noqa: BLE001 - one failure must not end the benchmark
        estimate = std_error = math.nan
        chosen, warnings, reason = estimator, [], ""
        failed = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    return {
        "case": case.key,
        "title": case.title,
        "n": n,
        "dim_x": x.shape[1],
        "dim_y": y.shape[1],
        "seed": seed,
        "estimator": estimator,
        "true": truth,
        "estimate": estimate,
        "std_error": std_error,
        "error": estimate - truth,
        "chosen": chosen,
        "reason": reason,
        "seconds": seconds,
        "warnings": warnings,
        "failed": failed,
    }


# -- tables -----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """``text`` safe in a markdown table cell (``q(y|x)`` would split it)."""
    return text.replace("|", "\\|")


def _num(value: float) -> str:
    """An estimate for a table: 3 decimals, thousands separated; huge ones in e-notation."""
    return f"{value:,.3f}" if abs(value) < 1e6 or not math.isfinite(value) else f"{value:.3e}"


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _chosen(rows: Sequence[dict]) -> str:
    counts = Counter(r["chosen"] for r in rows).most_common()
    return _cell(", ".join(f"{name} x{c}" if c > 1 else name for name, c in counts))


def summary_table(rows: Sequence[dict], estimators: Sequence[str]) -> str:
    """Per case: the truth, then per estimator the mean over seeds of the estimate ± its
    s.e., the mean error, the median seconds; what auto chose; warnings (runs that carry
    any / runs)."""
    head = ["case", "truth"]
    align = ["---", "---:"]
    for name in estimators:
        head += [f"{name}: mean ± s.e.", "error", "s (median)"]
        align += ["---:", "---:", "---:"]
        if name == "auto":
            head.append("chosen")
            align.append("---")
    head.append("warned runs (" + " / ".join(estimators) + ")")
    align.append("---")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for key in dict.fromkeys(r["case"] for r in rows):
        case_rows = [r for r in rows if r["case"] == key]
        cells = [f"{key}. {case_rows[0]['title']} (N = {case_rows[0]['n']})"]
        cells.append(f"{case_rows[0]['true']:.3f}")
        warned = []
        for name in estimators:
            mine = [r for r in case_rows if r["estimator"] == name]
            if not mine:
                cells += ["-", "-", "-"] + (["-"] if name == "auto" else [])
                warned.append("-")
                continue
            estimate = _mean([r["estimate"] for r in mine])
            error = estimate - mine[0]["true"]
            cells += [
                f"{_num(estimate)} ± {_num(_mean([r['std_error'] for r in mine]))}",
                ("+" if error >= 0 else "") + _num(error),
                f"{statistics.median(r['seconds'] for r in mine):.1f}",
            ]
            if name == "auto":
                cells.append(_chosen(mine))
            failed = sum(bool(r["failed"]) for r in mine)
            warned.append(
                f"{sum(bool(r['warnings']) for r in mine)}/{len(mine)}"
                + (f" ({failed} failed)" if failed else "")
            )
        cells.append(" / ".join(warned))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(rows: Sequence[dict]) -> str:
    """Every run."""
    lines = [
        "| case | seed | estimator | estimate | s.e. | error | chosen | seconds | warnings |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        chosen = _cell(r["chosen"] + (f" (failed: {r['failed']})" if r["failed"] else ""))
        error = ("+" if r["error"] >= 0 else "") + _num(r["error"])
        lines.append(
            f"| {r['case']} | {r['seed']} | {r['estimator']} | {_num(r['estimate'])} "
            f"| {_num(r['std_error'])} | {error} | {chosen} | {r['seconds']:.1f} "
            f"| {len(r['warnings'])} |"
        )
    return "\n".join(lines)


def warning_list(rows: Sequence[dict]) -> str:
    """Each distinct warning once, with the runs (case, estimator, seeds) that carried it."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        for text in r["warnings"]:
            seen.setdefault(text, []).append(f"{r['case']}/{r['estimator']}/seed {r['seed']}")
    if not seen:
        return "No run carried a warning."
    return "\n".join(f"- ({', '.join(where)}) {text}" for text, where in seen.items())


def timing_line(rows: Sequence[dict]) -> tuple[str, dict | None]:
    """The issue's timing criterion on case b's auto runs: median and max seconds."""
    mine = [r for r in rows if r["case"] == "b" and r["estimator"] == "auto"]
    if not mine:
        return "Timing: case b with auto was not run.", None
    seconds = [r["seconds"] for r in mine]
    median, worst = statistics.median(seconds), max(seconds)
    ok = worst <= TIME_LIMIT_S
    n = mine[0]["n"]
    note = "" if n == 10_000 else f" (the criterion is stated for N = 10,000; this ran N = {n})"
    text = (
        f"Timing, `estimate_mi(x, y)` defaults on case b (N = {n}, {mine[0]['dim_x']}-d x, "
        f"torch threads: {torch.get_num_threads()}): median {median:.1f} s, max {worst:.1f} s "
        f"(seeds: {len(mine)}); never above {TIME_LIMIT_S:.0f} s: "
        f"{'yes' if ok else '**no**'}{note}."
    )
    check = {"criterion": "auto on case b <= 120 s", "median_s": median, "max_s": worst, "ok": ok}
    return text, check


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, on_row: Callable[[dict], None] | None = None) -> int:
    """Run the cases x seeds x estimators, print the tables, write JSON and README."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy.examples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=10_000, help="samples per case (a-c, e, f)")
    parser.add_argument(
        "--n-large", type=int, default=30_000, help="samples for case d (20-d at 8 nats)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. seeds-1")
    parser.add_argument("--cases", default="a,b,c,d,e,f", help="comma-separated, from a-f")
    parser.add_argument(
        "--estimators", default="auto,doe", help="compared on cases a-e (f runs js)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the rows go")
    parser.add_argument("--no-readme", action="store_true", help="do not touch bench/README.md")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in (*CASES, JS_CASE.key)]
    if unknown:
        parser.error(f"unknown cases {unknown}; valid: a, b, c, d, e, f")
    estimators = [v.strip() for v in args.estimators.split(",") if v.strip()]
    torch.set_num_threads(args.threads)

    command = (
        f"python -m bench.accuracy.examples --n {args.n} --n-large {args.n_large} "
        f"--seeds {args.seeds} --cases {','.join(keys)} --estimators {','.join(estimators)}"
        + (f" --threads {args.threads}" if args.threads != 2 else "")
    )
    date = time.strftime("%Y-%m-%d")
    header = f"`{command}` ({date}): {environment()}; {cpu_model()}."
    print(header, flush=True)
    start = time.perf_counter()
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(runs_table([row]).splitlines()[-1], flush=True)
        if on_row:
            on_row(row)

    print(runs_table([]), flush=True)
    for seed in range(args.seeds):
        for key in keys:
            case = CASES.get(key, JS_CASE)
            n = args.n_large if case.large else args.n
            for name in case.estimators or estimators:
                record(run_case(case, n, seed, name))

    elapsed = time.perf_counter() - start
    main_rows = [r for r in rows if r["case"] != JS_CASE.key]
    js_rows = [r for r in rows if r["case"] == JS_CASE.key]
    timing, check = timing_line(rows)
    sections = [
        header,
        f"Each case estimated by `estimate_mi(x, y)` at its defaults (auto) and by the other "
        f"estimators listed ({', '.join(e for e in estimators if e != 'auto') or 'none'}) at "
        f'theirs, `device="cpu"`, torch threads: {args.threads}, seeds: {args.seeds} (each '
        "its own samples); mean over seeds of the estimate ± its reported s.e.; error = mean "
        "estimate - truth; seconds per call (`time.perf_counter`), median over seeds. Cases: "
        "`python -m bench.accuracy.examples --help`.",
    ]
    if main_rows:
        sections.append(summary_table(main_rows, estimators))
        sections.append(timing)
    if js_rows:
        sections.append(
            f"f. {JS_CASE.title}, N = {js_rows[0]['n']}, true {js_rows[0]['true']:.4f} nats: "
            '`estimate_mi(x, y, "js", estimator_options={"critic": "separable"})`, '
            "seed by seed:\n\n" + runs_table(js_rows)
        )
    sections += [
        "Every run:\n\n" + runs_table(rows),
        "Warnings:\n\n" + warning_list(rows),
        f"Total: {elapsed / 60:.1f} min.",
    ]
    text = "\n\n".join(sections)
    print("\n" + text)
    report = {
        "command": command,
        "date": date,
        "environment": environment(),
        "cpu": cpu_model(),
        "threads": args.threads,
        "rows": rows,
        "timing": check,
        "seconds": elapsed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    if not args.no_readme:
        write_readme_block("accuracy-examples", text)
        print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
