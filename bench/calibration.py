"""Do the posterior regions hold the truth as often as they claim? One run's calibration.

    python -m bench.calibration RUN [--runs-dir runs] [--faces 300] [--valid-faces 1200]

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
import time

import torch

from bench.machine import cpu_model
from mist_core.calibration import CalibrationReport, Coverage, calibrate
from mist_core.checkpoints import load_experiment, run_store


def _cell(c: Coverage) -> str:
    return f"{100 * c.observed:.1f}% ± {100 * c.std_error:.1f}"


def _print(report: CalibrationReport, recalibrated: bool) -> None:
    at = {lv: k for k, lv in enumerate(report.levels)}
    if recalibrated:
        print("After recalibration on the validation faces (test faces, regions drawn at the")
        print("recalibrated masses):")
        print("| landmark | density | validation faces | in 50% region | in 90% region |")
        print("|---|---|---:|---:|---:|")
    else:
        print(
            "| landmark | density | faces | in 50% region | in 90% region | NLL (nats) "
            "| median distance (px) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
    for r in report.rows:
        name = r.encoder or "q(landmark), no image"
        table = r.recalibrated if recalibrated else r.coverage
        if table is None:
            continue
        cells = f"{_cell(table[at[0.5]])} | {_cell(table[at[0.9]])}"
        if recalibrated:
            assert r.recalibration is not None
            print(f"| {r.landmark} | {name} | {r.recalibration.faces} | {cells} |")
        else:
            print(
                f"| {r.landmark} | {name} | {r.faces} | {cells} | {r.nll:.2f} "
                f"| {r.median_distance:.1f} |"
            )
    print()
    print("Pooled over the landmarks:")
    print("| density | faces x landmarks | in 50% region | in 90% region |")
    print("|---|---:|---:|---:|")
    for encoder in dict.fromkeys(r.encoder for r in report.rows):
        pooled = report.pooled(encoder, recalibrated)
        if pooled is None:
            continue
        cells = f"{_cell(pooled[at[0.5]])} | {_cell(pooled[at[0.9]])}"
        print(f"| {encoder or 'q(landmark), no image'} | {pooled[0].n} | {cells} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run's name (or folder)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--faces", type=int, default=300, help="test faces to evaluate")
    parser.add_argument(
        "--valid-faces", type=int, default=1200, help="validation faces for the recalibration"
    )
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
        f"`python -m bench.calibration {args.run} --faces {args.faces} --valid-faces "
        f"{args.valid_faces}`: {cpu_model()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); run {run.name}: "
        f"{config.dataset}, {config.train_size} training and {config.test_size} test faces, "
        f"{config.epochs} epochs, encoders {', '.join(config.encoders)}."
    )
    start = time.perf_counter()
    report = calibrate(
        experiment,
        faces=args.faces,
        valid_faces=args.valid_faces if args.recalibrate else 0,
        levels=(0.5, 0.9),
    )
    print(f"evaluated in {time.perf_counter() - start:.0f} s\n")
    _print(report, recalibrated=False)
    if args.recalibrate:
        _print(report, recalibrated=True)


if __name__ == "__main__":
    main()
