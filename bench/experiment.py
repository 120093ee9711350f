"""The seed's landmark experiment end to end, with the feature cache on and off.

    python -m bench.experiment --preset demo-cpu [--epochs N] [--precision P] [--seed S]
        [--write-readme]

Trains the preset (feature cache on), prints the MI table (encoder x landmark, nats, with
standard errors on the held-out test images) and the time per epoch; then times the same
training without the cache for ``--uncached-epochs`` epochs.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import torch

from bench.record import environment, write_readme_block
from mist_core.devices import resolve_device
from mist_core.experiment import PRESETS, LandmarkExperiment, preset
from mist_core.precision import PRECISIONS, resolve_precision
from mist_core.training import Progress


def _epoch_times(experiment: LandmarkExperiment, epochs: int) -> tuple[pd.DataFrame, list[float]]:
    """Train and return the log and the wall time of each epoch (training steps only)."""
    marks: dict[int, float] = {}

    def callback(progress: Progress) -> None:
        if progress.split == "train":
            marks[progress.epoch] = progress.elapsed_s

    start = time.perf_counter()
    log = experiment.train(callback=callback)
    total = time.perf_counter() - start
    ends = [marks[e] for e in sorted(marks)][:epochs]
    times = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    log.attrs["total_s"] = total
    return log, times


def table(mi: pd.DataFrame) -> str:
    """Markdown: one row per landmark, one column per encoder, 'mi ± se'."""
    encoders = list(dict.fromkeys(mi["encoder"]))
    landmarks = list(dict.fromkeys(mi["landmark"]))
    lines = ["| landmark | " + " | ".join(encoders) + " |", "|---|" + "---:|" * len(encoders)]
    for landmark in landmarks:
        cells = []
        for encoder in encoders:
            row = mi[(mi.encoder == encoder) & (mi.landmark == landmark)].iloc[0]
            cells.append(f"{row.mi:.2f} ± {row.std_error:.2f}")
        lines.append(f"| {landmark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.experiment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="demo-cpu", choices=sorted(PRESETS))
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument(
        "--uncached-epochs",
        type=int,
        default=1,
        help="epochs to time without the feature cache (0: skip)",
    )
    parser.add_argument(
        "--precision", default=None, choices=PRECISIONS, help="override the encoders' precision"
    )
    parser.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    changes = {
        name: value
        for name, value in (("epochs", args.epochs), ("precision", args.precision),
                            ("seed", args.seed))
        if value is not None
    }  # fmt: skip
    config = preset(args.preset, **changes)
    print(f"preset {args.preset}: {config.to_json()}", flush=True)
    precision = resolve_precision(config.precision, resolve_device(config.device))
    print(f"trained encoders take their training steps in {precision}")

    start = time.perf_counter()
    experiment = LandmarkExperiment(config)
    experiment.datasets()
    data_s = time.perf_counter() - start
    log, cached = _epoch_times(experiment, config.epochs)
    mi = experiment.evaluate()
    result = table(mi)
    print(result)

    lines = [
        f"images ready (drawn and resized once) in {data_s:.1f} s; feature tables for the "
        f"frozen encoders built in {log.attrs['setup_s']:.1f} s",
        "seconds per epoch with the feature cache: " + ", ".join(f"{t:.1f}" for t in cached),
    ]
    if args.uncached_epochs:
        uncached_config = config.replace(feature_cache=False, epochs=args.uncached_epochs)
        uncached = LandmarkExperiment(uncached_config, data=experiment.datasets())
        _, times = _epoch_times(uncached, args.uncached_epochs)
        lines.append(
            "seconds per epoch without the cache: " + ", ".join(f"{t:.1f}" for t in times)
        )
    for line in lines:
        print(line)

    if args.write_readme:
        label = (
            f"`python -m bench.experiment --preset {args.preset}"
            f"{''.join(f' --{k} {v}' for k, v in changes.items())}`: {config.epochs} epochs, "
            f"{config.train_size} training / {config.test_size} test images at "
            f"{config.image_size[0]}x{config.image_size[1]}, batch {config.batch_size}, "
            f"trained encoder's steps in {precision}. "
            f"{environment()}."
        )
        block = "\n".join(
            [
                label,
                "",
                "MI in nats on the test images (± standard error):",
                "",
                result,
                "",
                *[f"- {line}" for line in lines],
            ]
        )
        write_readme_block("experiment", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
