"""What the job wrapper costs: training speed with and without it, and how fast a stop is.

    python -m bench.jobs [--repeats 3] [--threads N] [--train-size N] [--epochs N]

Trains the same small demo-cpu experiment directly (``LandmarkExperiment.train`` in the main
thread, no checkpoints) and as a background job (``JobRegistry.submit``: worker thread,
progress snapshots, metrics.csv, epoch checkpoints written by a background thread),
alternating, and prints samples/s of each (counted from the first step, so set-up is
excluded and checkpoints are included) and the job's stop latency.

Each measurement runs in a fresh process. This matters: libgomp (torch's OpenMP on Linux)
shortens its spin-waits when more OpenMP threads exist than cores, so a thread's training
slows by 10-20% on 2 cores once *another* thread of the process (here: the main thread
after a direct run) owns an OpenMP team. The voluntary context switches printed beside each
figure show it (hundreds when spinning, tens of thousands when throttled).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from mist_core.experiment import LandmarkExperiment, preset
from mist_core.jobs import JobRegistry
from mist_core.training import Progress

CONFIG = preset(
    "demo-cpu", train_size=1280, test_size=32, batch_size=32, epochs=2, valid_fraction=0.0
)


def direct(config=CONFIG) -> float:
    first: list[Progress] = []
    last: list[Progress] = []

    def callback(progress: Progress) -> None:
        if progress.split == "train":
            (first if not first else last).append(progress)
            if last:
                last[:] = [progress]

    LandmarkExperiment(config).train(callback=callback)
    a, b = first[0], last[-1]
    return (b.samples - a.samples) / (b.elapsed_s - a.elapsed_s)


def as_job(registry: JobRegistry, config=CONFIG) -> float:
    job = registry.submit(config)
    job.wait()
    snap = job.snapshot()
    if snap.error:
        raise RuntimeError(snap.error)
    return snap.samples_per_s or float("nan")


def stop_latency(registry: JobRegistry, config=CONFIG) -> tuple[float, float]:
    """Seconds from stop() to the end of training, and to STOPPED (checkpoint written)."""
    job = registry.submit(config.replace(epochs=100))
    while job.snapshot().step < 3:
        time.sleep(0.01)
    asked = time.perf_counter()
    job.stop()
    while not (job.snapshot().message.startswith("saving") or job.snapshot().done):
        time.sleep(0.001)
    out_of_loop = time.perf_counter() - asked
    job.wait()
    return out_of_loop, time.perf_counter() - asked


def _measure(mode: str, config) -> dict:
    """One measurement in this (fresh) process."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory() as root:
        if mode == "direct":
            out = {"samples_per_s": direct(config)}
        elif mode == "job":
            out = {"samples_per_s": as_job(JobRegistry(root), config)}
        else:
            loop_s, stopped_s = stop_latency(JobRegistry(root), config)
            out = {"loop_s": loop_s, "stopped_s": stopped_s}
    after = resource.getrusage(resource.RUSAGE_SELF)
    out["context_switches"] = after.ru_nvcsw - before.ru_nvcsw
    out["threads"] = torch.get_num_threads()
    return out


def _child(mode: str, config, threads: int | None) -> dict:
    command = [sys.executable, "-m", "bench.jobs", "--child", mode, "--config", config.to_json()]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.jobs --child {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=None, help="images (default 1280)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 2)")
    parser.add_argument("--child", choices=("direct", "job", "stop"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        from mist_core.experiment import ExperimentConfig

        print(json.dumps(_measure(args.child, ExperimentConfig.from_json(args.config))))
        return 0
    changes = {"train_size": args.train_size, "epochs": args.epochs}
    config = CONFIG.replace(**{k: v for k, v in changes.items() if v is not None})
    plain, wrapped = [], []
    for _ in range(args.repeats):
        a = _child("direct", config, args.threads)
        b = _child("job", config, args.threads)
        plain.append(a["samples_per_s"])
        wrapped.append(b["samples_per_s"])
        print(
            f"direct {a['samples_per_s']:.1f} samples/s ({a['context_switches']} context "
            f"switches), job {b['samples_per_s']:.1f} samples/s ({b['context_switches']})",
            flush=True,
        )
    stop = _child("stop", config, args.threads)
    p, w = statistics.median(plain), statistics.median(wrapped)
    print(f"config: {config.train_size} images, batch {config.batch_size}, {config.epochs} epochs")
    print(
        f"median over {args.repeats}: direct {p:.1f} samples/s, as a job {w:.1f} samples/s, "
        f"wrapper cost {100 * (p - w) / p:+.1f}% ({a['threads']} threads)"
    )
    print(
        f"stop: training left the loop {stop['loop_s']:.2f} s after stop(); STOPPED with its "
        f"checkpoint written after {stop['stopped_s']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
