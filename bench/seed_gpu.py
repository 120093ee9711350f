"""Time the ``seed`` preset's epochs on a CelebA-format folder and project a full seed run.

    python -m bench.seed_gpu DIR [--device cuda] [--images N] [--epochs E] [--batch 32]
        [--encoders random_init pretrained finetuned] [--size H W] [--test-images 1000]
        [--write-folder M] [--threads T] [--write-readme]

Runs ``preset("seed")`` (CelebA at 218 x 178, encoders random_init / pretrained / finetuned,
batch 32, lr 5e-4, image store instead of preload, feature cache on, precision "auto") on
``DIR/celeba/`` for ``E`` epochs of ``N`` training-split images (default: the whole split)
and prints the image store's build time, the frozen encoders' feature tables, the seconds
and images/s of every epoch, the evaluation on the test images and the projected time of
the full seed run: 20 epochs of CelebA's 162,770 training images, its 1,000 test images and
the store of those 163,770 images (the valid split is never read). The formula is printed::

    total = (sum of epochs 2..E) / ((E - 1) * N) * 162,770 * 20      epochs
          + tables_s / N * 162,770                                    frozen feature tables
          + eval_s / n_test * 1,000                                   evaluation
          + store_s / n_stored * 163,770                              image store, built once

Epoch 1 (first steps: cuDNN/oneDNN set-up, allocator warm-up) is printed but left out of
the rate; with ``E = 1`` it is the rate. On CUDA the GPU utilisation is sampled every 0.5 s
during the training epochs (``torch.cuda.utilization()`` when pynvml is installed, else
``nvidia-smi``) and the peak memory is ``torch.cuda.max_memory_allocated``.

The folder: ``DIR`` holds ``celeba/`` (real CelebA, or drawn faces of ``bench.celeba_like``).
``--write-folder M`` writes ``M`` drawn faces there first (resumable; one drawing process per
core); without it, a ``DIR`` with no ``celeba/`` gets the fewest drawn faces whose train split
has ``--images`` faces. The image store goes where ``$MIST_IMAGE_CACHE`` says (default
``~/.cache/mist/images``); a store that already exists is reused, and its build is then not
in the projection (the output says so).

Encoders: ImageNet weights are never downloaded. When an encoder needs them and they are
not in torchvision's hub cache, a stand-in file of random ResNet18 weights is written to a
temporary hub folder for this run only (``$TORCH_HOME`` points there while the experiment
is built): the same networks, so the same compute, but not the seed's features; the output
says which encoders ran and on what weights.

The GPU check (one command; not yet run on a GPU, expected well under 8 minutes on an H200:
~15 s to draw 20,000 faces on 16 cores and ~10 s for their annotation files, seconds to store
them, the feature tables and 3 epochs of 16,070 training-split images, 1,000 test images)::

    python -m bench.seed_gpu /tmp/celeba20k --device cuda --write-folder 20000 --epochs 3

A small CPU run::

    python -m bench.seed_gpu /tmp/celeba_small --device cpu --images 64 --epochs 2 \\
        --batch 8 --size 64 52
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.celeba_like import split_counts, write_celeba_like
from bench.machine import cpu_model
from bench.record import environment, write_readme_block
from mist_core.data.celeba import GENERATED_MARKER
from mist_core.data.store import StoreConfig, default_cache_dir, image_files, store_key
from mist_core.devices import resolve_device
from mist_core.encoders import ENCODER_PRESETS, encoder_availability, imagenet_weights_path
from mist_core.experiment import LandmarkExperiment, preset
from mist_core.experiment.config import ExperimentConfig
from mist_core.experiment.data import source_images
from mist_core.freeze import is_frozen
from mist_core.precision import resolve_precision
from mist_core.training import Progress

__all__ = ["FULL_EPOCHS", "FULL_STORED", "FULL_TEST", "FULL_TRAIN", "Projection", "project"]

#: The full seed run: CelebA's training split, the preset's epochs and test images.
FULL_TRAIN = 162_770
FULL_EPOCHS = 20
FULL_TEST = 1_000
#: Images the full run stores: the training split and the 1,000 test images.
FULL_STORED = FULL_TRAIN + FULL_TEST
SAMPLE_S = 0.5  # GPU utilisation sampling period


@dataclass(frozen=True)
class Projection:
    """The projected full seed run, term by term, in seconds."""

    epochs_s: float
    tables_s: float
    eval_s: float
    store_s: float
    per_image_s: float  # one training-split image, one epoch
    formula: str

    @property
    def total_s(self) -> float:
        return self.epochs_s + self.tables_s + self.eval_s + self.store_s


def project(
    epoch_s: Sequence[float],
    n_train: int,
    *,
    tables_s: float,
    eval_s: float,
    n_test: int,
    store_s: float | None,
    n_stored: int,
    full_train: int = FULL_TRAIN,
    full_epochs: int = FULL_EPOCHS,
    full_test: int = FULL_TEST,
    full_stored: int = FULL_STORED,
) -> Projection:
    """Scale measured times to the full run: epochs 2.. (epoch 1 when it is the only one)
    per training-split image, the feature tables per training image, the evaluation per test
    image and the store build per stored image (``store_s=None``: the store was reused, the
    term is 0).

    >>> p = project([9.0, 2.0, 2.0], 100, tables_s=1.0, eval_s=0.5, n_test=10,
    ...             store_s=3.0, n_stored=110, full_train=1000, full_epochs=5,
    ...             full_test=20, full_stored=1020)
    >>> p.per_image_s, p.epochs_s, p.tables_s, p.eval_s, round(p.store_s, 6), p.total_s
    (0.02, 100.0, 10.0, 1.0, 27.818182, 138.8181818181818)
    """
    if not epoch_s or n_train < 1 or n_test < 1 or n_stored < 1:
        raise ValueError("need at least one epoch time and positive image counts")
    steady = list(epoch_s[1:]) or list(epoch_s[:1])
    per_image = sum(steady) / (len(steady) * n_train)
    first = "2..E" if len(epoch_s) > 1 else "1 (the only one)"
    formula = (
        f"total = mean s/epoch of epochs {first} / {n_train} images x {full_train:,} x "
        f"{full_epochs} epochs + tables_s / {n_train} x {full_train:,} + eval_s / {n_test} x "
        f"{full_test:,} + store_s / {n_stored} x {full_stored:,}"
    )
    return Projection(
        epochs_s=per_image * full_train * full_epochs,
        tables_s=tables_s / n_train * full_train,
        eval_s=eval_s / n_test * full_test,
        store_s=0.0 if store_s is None else store_s / n_stored * full_stored,
        per_image_s=per_image,
        formula=formula,
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


# --- the folder --------------------------------------------------------------------------


def images_for_train_split(n_train: int) -> int:
    """The fewest images whose CelebA-proportioned train split has ``n_train`` images."""
    n = max(5, n_train)
    while split_counts(n)[0] < n_train:
        n += 1
    return n


def _prepare_folder(root: Path, write: int | None, images: int | None) -> str:
    """Make sure ``root/celeba`` exists; say what it is."""
    base = root / "celeba"
    if write is None and (base / "img_align_celeba").is_dir():
        marker = base / GENERATED_MARKER
        return "drawn faces (bench.celeba_like)" if marker.is_file() else "CelebA"
    if write is None:
        if images is None:
            raise ValueError(f"{base} does not exist: give --images or --write-folder")
        write = images_for_train_split(images)
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"\r{done}/{total} faces ({rate:.0f}/s)", end="", file=sys.stderr, flush=True)

    write_celeba_like(root, write, progress=progress)
    print(file=sys.stderr)
    took = _duration(time.perf_counter() - start)
    return f"drawn faces (bench.celeba_like: {write} faces written or found in {took})"


# --- encoders ----------------------------------------------------------------------------


@contextlib.contextmanager
def _stand_in_weights(names: Sequence[str]) -> Iterator[str]:
    """When an encoder among ``names`` needs ImageNet weights that are missing, point
    ``$TORCH_HOME`` at a temporary folder holding random ResNet18 weights under the official
    file name, while the experiment is built; yields what the encoders run on."""
    missing = [n for n in names if not encoder_availability(ENCODER_PRESETS[n]).available]
    if not missing:
        yield "their own weights (random init, or ImageNet weights found in the hub cache)"
        return
    if any(ENCODER_PRESETS[n].init != "imagenet" for n in missing):
        raise ValueError(f"encoders {missing} are not available and no stand-in is known")
    folder = Path(tempfile.mkdtemp(prefix="mist-stand-in-"))
    before = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(folder)
    try:
        path = imagenet_weights_path("resnet18")
        path.parent.mkdir(parents=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            from torchvision.models import resnet18

            torch.save(resnet18(weights=None).state_dict(), path)
        yield (
            f"{', '.join(missing)}: ImageNet weights not found, so a stand-in file of RANDOM "
            "ResNet18 weights (same network, same compute, not the seed's features; nothing "
            "downloaded); others: their own weights"
        )
    finally:
        if before is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = before
        shutil.rmtree(folder, ignore_errors=True)


# --- GPU utilisation ---------------------------------------------------------------------


class GpuSampler:
    """Samples GPU utilisation (%) and memory used (MiB) every :data:`SAMPLE_S` seconds in a
    background thread, with ``torch.cuda.utilization`` (needs pynvml) or ``nvidia-smi``."""

    def __init__(self, device: torch.device) -> None:
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.samples: list[tuple[float, float, float]] = []  # (time, util %, memory MiB)
        self.source = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            torch.cuda.utilization(self.index)
            self.source = "torch.cuda.utilization (pynvml)"
        except Exception:  # noqa: BLE001 - pynvml absent or NVML failing: try nvidia-smi
            if shutil.which("nvidia-smi") and self._smi() is not None:
                self.source = "nvidia-smi"

    def _smi(self) -> tuple[float, float] | None:
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={self.index}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            util, memory = (float(v) for v in out.strip().splitlines()[0].split(","))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
        return util, memory

    def _sample(self) -> tuple[float, float] | None:
        if self.source == "nvidia-smi":
            return self._smi()
        try:
            util = float(torch.cuda.utilization(self.index))
        except Exception:  # noqa: BLE001 - NVML failing now: skip this sample
            return None
        try:
            memory = float(torch.cuda.device_memory_used(self.index)) / 2**20
        except Exception:  # noqa: BLE001 - older torch: utilisation only
            memory = math.nan
        return util, memory

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            value = self._sample()
            if value is not None:
                self.samples.append((time.perf_counter(), *value))

    def start(self) -> None:
        if self.source:
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, start: float, end: float) -> str:
        """Mean / median utilisation (and peak memory used) of the samples in ``[start, end]``."""
        if not self.source:
            return "GPU utilisation: not sampled (no pynvml, no nvidia-smi)"
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return f"GPU utilisation: no samples during training ({self.source})"
        utils = [u for u, _ in inside]
        memory = [m for _, m in inside if not math.isnan(m)]
        text = (
            f"GPU utilisation during the training epochs: mean {statistics.fmean(utils):.0f}%, "
            f"median {statistics.median(utils):.0f}% ({len(utils)} samples every {SAMPLE_S} s, "
            f"{self.source})"
        )
        if memory:
            text += f"; memory used on the GPU at most {max(memory):,.0f} MiB"
        return text


# --- timing ------------------------------------------------------------------------------


def _store_exists(config: ExperimentConfig, split: str) -> bool:
    """Whether the image store of ``split`` exists already (it is then reused)."""
    files = image_files(source_images(config, split))
    key = store_key(files, tuple(config.image_size))  # type: ignore[arg-type]
    return (StoreConfig(tuple(config.image_size)).folder / key).is_dir()  # type: ignore[arg-type]


def _train_timed(experiment: LandmarkExperiment) -> tuple[list[float], float, float, float]:
    """Train; return each epoch's wall time (its steps and its validation), the feature
    tables' time and the perf_counter at the start and end of the epochs."""
    ends: dict[int, float] = {}
    first: list[float] = []

    def callback(progress: Progress) -> None:
        if not first:
            first.append(time.perf_counter() - progress.elapsed_s)
        # a step reports the epoch it is in; the validation after it, the epochs completed
        epoch = progress.epoch if progress.split == "train" else max(progress.epoch - 1, 0)
        ends[epoch] = max(ends.get(epoch, 0.0), progress.elapsed_s)

    before = time.perf_counter()
    log = experiment.train(callback=callback)
    after = time.perf_counter()
    marks = [ends[e] for e in sorted(ends)]
    times = [b - a for a, b in zip([0.0, *marks[:-1]], marks, strict=True)]
    start = first[0] if first else before
    return times, float(log.attrs["setup_s"]), start, min(after, start + marks[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed_gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, help="folder that holds (or will hold) celeba/")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--images", type=int, default=None, help="training-split images (default: all)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="default: the seed's 32")
    parser.add_argument(
        "--encoders", nargs="+", default=None, choices=sorted(ENCODER_PRESETS),
        help="default: the seed's random_init pretrained finetuned",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="image size the encoders see (default: the seed's 218 178)",
    )  # fmt: skip
    parser.add_argument(
        "--test-images", type=int, default=FULL_TEST, help="at most this many test images"
    )
    parser.add_argument(
        "--write-folder", type=int, default=None, metavar="M",
        help="first write M drawn faces into DIR/celeba (bench.celeba_like)",
    )  # fmt: skip
    parser.add_argument("--precision", default=None, help="override 'auto'")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.dir.expanduser().absolute()
    try:
        what = _prepare_folder(root, args.write_folder, args.images)
    except ValueError as error:
        parser.error(str(error))

    encoders = tuple(args.encoders) if args.encoders else preset("seed").encoders
    changes: dict[str, object] = {
        "celeba_root": str(root),
        "train_size": args.images,
        "epochs": args.epochs,
        "device": args.device,
        "encoders": encoders,
    }
    for name, value in (
        ("batch_size", args.batch),
        ("image_size", tuple(args.size) if args.size else None),
        ("precision", args.precision),
    ):
        if value is not None:
            changes[name] = value
    config = preset("seed", **changes)
    # at most --test-images test images: the test split may be smaller
    tests = source_images(config.replace(test_size=args.test_images), "test")
    n_test = len(tests)  # type: ignore[arg-type]
    config = config.replace(test_size=n_test)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    cuda = device.type == "cuda"

    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    machine = torch.cuda.get_device_name(device) if cuda else cpu_model()
    say(f"device {device} ({machine}); {environment()}")
    say(f"folder {root / 'celeba'}: {what}")

    with _stand_in_weights(encoders) as weights:
        experiment = LandmarkExperiment(config)
    frozen = [n for n, e in experiment.encoders.items() if is_frozen(e)]
    trained = [n for n in experiment.encoders if n not in frozen]
    say(
        f"encoders {', '.join(encoders)} (frozen: {', '.join(frozen) or 'none'}; trained: "
        f"{', '.join(trained) or 'none'}) on {weights}"
    )
    say(
        f"seed preset with {config.epochs} epochs, image size {config.image_size[0]} x "
        f"{config.image_size[1]}, batch {config.batch_size}, lr {config.lr:g}, trained "
        f"encoders' steps in {precision}"
        f"{' (autocast, channels-last inputs)' if precision == 'bfloat16' else ''}, "
        f"evaluation and frozen features in float32, feature cache "
        f"{'on' if config.feature_cache else 'off'}, preload {config.preload} (image store)"
    )

    reused = _store_exists(config, "train") and _store_exists(config, "test")
    start = time.perf_counter()
    data = experiment.datasets()
    data["test"][0]  # builds the test images' store now, not in the evaluation
    store_s = time.perf_counter() - start
    n_train, n_stored = len(data["train"]), len(data["train"]) + n_test  # type: ignore[arg-type]
    say(
        f"image store ({default_cache_dir()}): {n_stored} images "
        + (
            f"reused in {store_s:.1f} s (built by an earlier run: not measured, not projected)"
            if reused
            else f"built in {store_s:.1f} s ({n_stored / max(store_s, 1e-9):.0f} images/s)"
        )
    )

    sampler = GpuSampler(device) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if sampler is not None:
        sampler.start()
    try:
        epoch_s, tables_s, train_start, train_end = _train_timed(experiment)
    finally:
        if sampler is not None:
            sampler.stop()
    say(f"frozen feature tables ({len(frozen)} encoders x {n_train} images): {tables_s:.1f} s")
    for epoch, seconds in enumerate(epoch_s, 1):
        note = " (first: warm-up, not in the rate)" if epoch == 1 and len(epoch_s) > 1 else ""
        say(
            f"epoch {epoch}: {seconds:.2f} s, {n_train / seconds:.1f} images/s{note} "
            f"({n_train} training-split images: training steps and validation)"
        )
    if sampler is not None:
        say(sampler.summary(train_start, train_end))
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        say(f"peak GPU memory allocated by torch: {peak:.2f} GiB")

    start = time.perf_counter()
    experiment.evaluate()
    eval_s = time.perf_counter() - start
    say(f"evaluation on {n_test} test images (with their feature tables): {eval_s:.2f} s")

    projection = project(
        epoch_s,
        n_train,
        tables_s=tables_s,
        eval_s=eval_s,
        n_test=n_test,
        store_s=None if reused else store_s,
        n_stored=n_stored,
    )
    say(f"projection: {projection.formula}")
    say(
        f"projected full seed run ({FULL_EPOCHS} epochs x {FULL_TRAIN:,} images, {FULL_TEST:,} "
        f"test images): epochs {_duration(projection.epochs_s)} + feature tables "
        f"{_duration(projection.tables_s)} + evaluation {_duration(projection.eval_s)} + "
        f"store {_duration(projection.store_s)} = {projection.total_s:.0f} s "
        f"({_duration(projection.total_s)})"
    )
    if args.write_readme:
        block = "\n".join(
            [
                "`python -m bench.seed_gpu "
                + " ".join(argv if argv is not None else sys.argv[1:])
                + "`:",
                "",
                *[f"- {line}" for line in lines],
            ]
        )
        write_readme_block("seed-gpu", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
