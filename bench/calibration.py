"""Do the posterior regions hold the truth as often as they claim? One run's calibration.

    python -m bench.calibration RUN [--runs-dir runs] [--faces 300] [--checkpoint latest]

Loads the run's checkpoint, draws every test face's posterior maps over its pixel grid as
the Posteriors page does, and prints, per landmark and density (the marginal q(landmark),
then each encoder's q(landmark | representation)): the fraction of faces whose true
landmark lies inside the 50% and 90% highest-density regions (with the binomial standard
error at the nominal level), the mean negative log-density of the truth (nats) and the
median distance from the most likely pixel to the truth (pixels). A last block pools the
landmarks per density. With ``--recalibrate`` (the default) it also fits a
:class:`~mist_core.calibration.Recalibration` per density on the run's validation faces (held
out of training, never the test faces) and prints the test coverage of the regions drawn
with it.

Train a run to measure, e.g. the demo preset from the CLI::

    python -m mist_core --run-dir runs train --preset demo-cpu
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from mist_core.calibration import (
    Calibration,
    Recalibration,
    coverage,
    evaluate_calibration,
    fit_recalibration,
)
from mist_core.checkpoints import load_experiment, run_store


def _cell(result: Calibration, level: float, recalibration: Recalibration | None = None) -> str:
    (c,) = coverage(result.ranks, (level,), recalibration)
    return f"{100 * c.observed:.1f}% ± {100 * c.std_error:.1f}"


def _print_recalibrated(results: list[Calibration], fitted: dict) -> None:
    print("After recalibration on the validation faces (test faces, regions drawn at the")
    print("recalibrated masses):")
    print("| landmark | density | validation faces | in 50% region | in 90% region |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        rec = fitted[(r.encoder, r.landmark)]
        name = r.encoder or "q(landmark), no image"
        print(
            f"| {r.landmark} | {name} | {len(rec.ranks)} | {_cell(r, 0.5, rec)} "
            f"| {_cell(r, 0.9, rec)} |"
        )


def _print(results: list[Calibration]) -> None:
    print(
        "| landmark | density | faces | in 50% region | in 90% region | NLL (nats) "
        "| median distance (px) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        name = r.encoder or "q(landmark), no image"
        print(
            f"| {r.landmark} | {name} | {r.n} | {_cell(r, 0.5)} | {_cell(r, 0.9)} "
            f"| {r.nll:.2f} | {r.median_distance:.1f} |"
        )
    print()
    print("Pooled over the landmarks:")
    print("| density | faces x landmarks | in 50% region | in 90% region |")
    print("|---|---:|---:|---:|")
    for encoder in dict.fromkeys(r.encoder for r in results):
        ranks = np.concatenate([r.ranks for r in results if r.encoder == encoder])
        pooled = {c.level: c for c in coverage(ranks, (0.5, 0.9))}
        cells = [
            f"{100 * pooled[lv].observed:.1f}% ± {100 * pooled[lv].std_error:.1f}"
            for lv in (0.5, 0.9)
        ]
        print(f"| {encoder or 'q(landmark), no image'} | {len(ranks)} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run's name (or folder)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--faces", type=int, default=300, help="test faces to evaluate")
    parser.add_argument("--checkpoint", default="latest")
    parser.add_argument(
        "--no-recalibrate", dest="recalibrate", action="store_false", help="skip the fit"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    run = run_store(args.runs_dir).open(args.run)
    experiment = load_experiment(run, args.checkpoint)
    config = experiment.config
    print(
        f"`python -m bench.calibration {args.run} --faces {args.faces}`: {platform.machine()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); run {run.name}: "
        f"{config.dataset}, {config.train_size} training and {config.test_size} test faces, "
        f"{config.epochs} epochs, encoders {', '.join(config.encoders)}."
    )
    start = time.perf_counter()
    results = evaluate_calibration(experiment, max_faces=args.faces, levels=(0.5, 0.9))
    print(f"test faces evaluated in {time.perf_counter() - start:.0f} s\n")
    _print(results)
    if args.recalibrate:
        start = time.perf_counter()
        valid = evaluate_calibration(experiment, "valid", levels=(0.5, 0.9))
        print(f"\nvalidation faces evaluated in {time.perf_counter() - start:.0f} s\n")
        fitted = {(v.encoder, v.landmark): fit_recalibration(v.ranks) for v in valid}
        _print_recalibrated(results, fitted)


if __name__ == "__main__":
    main()
