"""What the job wrapper costs: training speed with and without it, and how fast a stop is.

    python -m bench.jobs [--repeats 3] [--threads N]

Trains the same small demo-cpu experiment directly (``LandmarkExperiment.train``) and as a
background job (``JobRegistry.submit``: thread, progress snapshots, metrics.csv, epoch
checkpoints), alternating, and prints samples/s of each (counted from the first step, so
set-up is excluded and checkpoints are included) and the job's stop latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from mist_core.data import FeatureCache
from mist_core.experiment import LandmarkExperiment, preset
from mist_core.jobs import JobRegistry
from mist_core.training import Progress

CONFIG = preset(
    "demo-cpu", train_size=320, test_size=32, batch_size=32, epochs=2, valid_fraction=0.0
)


def direct(cache: FeatureCache) -> float:
    first: list[Progress] = []
    last: list[Progress] = []

    def callback(progress: Progress) -> None:
        if progress.split == "train":
            (first if not first else last).append(progress)
            if last:
                last[:] = [progress]

    LandmarkExperiment(CONFIG, cache=cache).train(callback=callback)
    a, b = first[0], last[-1]
    return (b.samples - a.samples) / (b.elapsed_s - a.elapsed_s)


def as_job(registry: JobRegistry) -> float:
    job = registry.submit(CONFIG)
    job.wait()
    snap = job.snapshot()
    if snap.error:
        raise RuntimeError(snap.error)
    return snap.samples_per_s or float("nan")


def stop_latency(registry: JobRegistry) -> tuple[float, float]:
    """Seconds from stop() to the end of training, and to STOPPED (checkpoint written)."""
    job = registry.submit(CONFIG.replace(epochs=100))
    while job.snapshot().step < 3:
        time.sleep(0.01)
    asked = time.perf_counter()
    job.stop()
    while not (job.snapshot().message.startswith("saving") or job.snapshot().done):
        time.sleep(0.001)
    out_of_loop = time.perf_counter() - asked
    job.wait()
    return out_of_loop, time.perf_counter() - asked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=None, help="images (default 320)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 2)")
    args = parser.parse_args(argv)
    global CONFIG
    changes = {"train_size": args.train_size, "epochs": args.epochs}
    CONFIG = CONFIG.replace(**{k: v for k, v in changes.items() if v is not None})
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = FeatureCache()
    with tempfile.TemporaryDirectory() as root:
        registry = JobRegistry(root, feature_cache=cache)
        plain, wrapped = [], []
        for _ in range(args.repeats):
            plain.append(direct(cache))
            wrapped.append(as_job(registry))
            print(f"direct {plain[-1]:.1f} samples/s, job {wrapped[-1]:.1f} samples/s", flush=True)
        loop_s, stopped_s = stop_latency(registry)
    p, w = statistics.median(plain), statistics.median(wrapped)
    print(f"config: {CONFIG.train_size} images, batch {CONFIG.batch_size}, {CONFIG.epochs} epochs")
    print(
        f"median over {args.repeats}: direct {p:.1f} samples/s, as a job {w:.1f} samples/s, "
        f"wrapper cost {100 * (p - w) / p:+.1f}% ({torch.get_num_threads()} threads)"
    )
    print(
        f"stop: training left the loop {loop_s:.2f} s after stop(); STOPPED with its "
        f"checkpoint written after {stopped_s:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
