"""Images per second of two ways to feed training from a CelebA folder, side by side.

``python -m bench.loader DIR [--epochs 3] [--size 64 52] [--batch 64] [--workers 2]
[--split all] [--cache CACHE]``

(a) **torchvision + PIL + DataLoader**, the seed preset's way (``preload=False``):
    ``CelebALandmarks`` items (every JPEG PIL-decoded every epoch) in shuffled batches from a
    ``DataLoader`` with ``--workers`` processes, each batch resized to ``--size`` as the
    encoders do (``resize_images``).
(b) **the image store** (``mist_core.data.store``): decoded and resized once (build time
    reported on its own, with ``--workers`` processes), then every epoch reads shuffled
    batches of uint8 from the memory map and converts them to float.

The two alternate epoch by epoch (the machine may be shared). After each epoch the script
prints images/s and this process's memory from ``/proc/self/status``: ``VmHWM`` (peak RSS
during the epoch; the peak is reset before each epoch through ``/proc/self/clear_refs``),
``RssAnon`` (its own memory) and ``RssFile`` (mapped file pages: the store's pages in the
page cache, shared and reclaimable). DataLoader workers are other processes, not counted.

DIR may be a real CelebA root or one written by ``python -m bench.celeba_like`` (accepted
through its marker file; no checksum patching needed).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.machine import cpu_model
from mist_core.data.celeba import CelebALandmarks
from mist_core.data.images import resize_images
from mist_core.data.store import StoreConfig, open_store

__all__ = ["main", "memory"]


def memory() -> dict[str, int]:
    """This process's ``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` in MiB (Linux)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    values[key] = int(rest.split()[0]) // 1024
    except OSError:
        import resource

        values["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return values


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return cpu_model()


def _epoch_torchvision(
    dataset: CelebALandmarks, size: tuple[int, int], batch: int, workers: int, epoch: int
) -> int:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(epoch),
    )
    seen = 0
    for items in loader:
        images = resize_images(items["image"], size)
        seen += len(images)
    return seen


def _epoch_store(store, batch: int, epoch: int) -> int:  # noqa: ANN001
    order = torch.randperm(len(store), generator=torch.Generator().manual_seed(epoch))
    seen = 0
    for start in range(0, len(order), batch):
        images, _landmarks = store.batch(order[start : start + batch])
        images = images.float().div_(255.0)
        seen += len(images)
    return seen


def _line(name: str, epoch: int, seen: int, seconds: float) -> str:
    mem = memory()
    return (
        f"  epoch {epoch}  {name:<22} {seen / seconds:8.0f} images/s  ({seconds:6.2f} s)  "
        f"peak RSS {mem.get('VmHWM', -1):5d} MiB  (anon {mem.get('RssAnon', -1):4d}, "
        f"file {mem.get('RssFile', -1):4d})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loader", description=__doc__)
    parser.add_argument("dir", type=Path, help="CelebA root (holding celeba/)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 52), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split", default="all")
    parser.add_argument("--cache", type=Path, default=None, help="store folder (default: temp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    size = (args.size[0], args.size[1])

    dataset = CelebALandmarks(args.dir, split=args.split)
    print(f"CPU: {_lscpu_model()}; torch {torch.__version__}, 1 thread")
    print(
        f"{dataset.root} split {args.split}: {len(dataset)} images -> {size[0]}x{size[1]}, "
        f"batch {args.batch}, {args.workers} workers, {args.epochs} epochs"
    )
    with tempfile.TemporaryDirectory(prefix="mist-store-") as temp:
        cache = args.cache or Path(temp)
        config = StoreConfig(size, cache_dir=cache, workers=max(1, args.workers))
        start = time.perf_counter()
        store = open_store(dataset, config)
        build = time.perf_counter() - start
        print(
            f"store: built (or reused) in {build:.2f} s = {len(store) / build:.0f} images/s, "
            f"{store.images.nbytes / 2**20:.0f} MiB at {store.folder}"
        )
        start = time.perf_counter()
        open_store(dataset, config)
        print(f"store: reopened in {1000 * (time.perf_counter() - start):.1f} ms")
        for epoch in range(args.epochs):
            _reset_peak()
            start = time.perf_counter()
            seen = _epoch_torchvision(dataset, size, args.batch, args.workers, epoch)
            print(_line("torchvision+PIL", epoch, seen, time.perf_counter() - start))
            _reset_peak()
            start = time.perf_counter()
            seen = _epoch_store(store, args.batch, epoch)
            print(_line("store (uint8 memmap)", epoch, seen, time.perf_counter() - start))
        del store
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
