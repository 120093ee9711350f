"""The demo's time against the same compute written the plain way, side by side.

    python -m bench.demo_speed [--precision float32] [--threads 2] [--repeats 1]
        [--skip-plain] [--skip-demo] [--write-readme]

*Plain compute* (the reference the demo is held to): two torchvision ResNet18s on 2,000
drawn faces of 64 x 52 for 6 epochs, batch 64, float32: one trained with Adam, one frozen
(evaluated every step, as a plain loop would), a linear head on each regressing the five
landmarks. The images are drawn and resized before the clock starts.

*Demo*: ``python -m mist_core train --preset demo-cpu --set precision=P`` as a user runs it
(a fresh process: drawing the faces, training, the MI table on the test faces, the posterior
regions' calibration), timed from the command to its exit; its MI table is read back from the
run's summary. It runs twice: *cold*, with an empty image cache (a first run on a machine:
every face drawn), then *warm* (the drawn faces loaded from the cache,
``mist_core.data.face_cache``, as every later run with the same faces).

Each repeat runs the plain loop, then the demo cold and warm, so all see the same machine
state; the ratios are taken per repeat. The CPU model (``lscpu``) is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.machine import cpu_model
from bench.record import environment, write_readme_block

NAN = float("nan")
PLAIN = dict(images=2000, size=(64, 52), epochs=6, batch=64, lr=1e-3)


def _faces(n: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` drawn faces resized to ``size``: images ``[n, 3, H, W]`` float32 in [0, 1],
    landmarks ``[n, 10]`` scaled to [0, 1] of the source frame."""
    from mist_core.data import SyntheticFaces
    from mist_core.data.images import resize_images
    from mist_core.data.landmarks import CELEBA_HEIGHT, CELEBA_WIDTH, LANDMARKS

    faces = SyntheticFaces(n, seed=0)
    images, marks = [], []
    for drawn, points in faces.render_chunks(range(n)):
        chunk = torch.from_numpy(drawn).permute(0, 3, 1, 2).float().div_(255.0)
        images.append(resize_images(chunk, size))
        xy = torch.cat([torch.from_numpy(points[name]) for name in LANDMARKS], dim=1)
        marks.append(xy.float() / torch.tensor([CELEBA_WIDTH, CELEBA_HEIGHT] * len(LANDMARKS)))
    return torch.cat(images), torch.cat(marks)


def plain_compute(threads: int) -> float:
    """Seconds for the plain loop's 6 epochs (the images are made before the clock)."""
    from torchvision.models import resnet18

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images, targets = _faces(PLAIN["images"], PLAIN["size"])
    trained, frozen = resnet18(num_classes=10), resnet18()
    frozen.fc = nn.Identity()
    frozen.eval().requires_grad_(False)
    frozen_head = nn.Linear(512, 10)
    optimizer = torch.optim.Adam([*trained.parameters(), *frozen_head.parameters()], PLAIN["lr"])
    start = time.perf_counter()
    for _ in range(PLAIN["epochs"]):
        order = torch.randperm(len(images))
        for i in range(0, len(images), PLAIN["batch"]):
            index = order[i : i + PLAIN["batch"]]
            x, y = images[index], targets[index]
            with torch.no_grad():
                features = frozen(x)
            loss = nn.functional.mse_loss(trained(x), y) + nn.functional.mse_loss(
                frozen_head(features), y
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def demo(precision: str, threads: int, runs: Path, cache: Path) -> tuple[float, dict[str, float]]:
    """Seconds for ``python -m mist_core train --preset demo-cpu`` from command to exit, and
    each encoder's mean MI over the landmarks (nats), with ``cache`` as the image cache."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MIST_IMAGE_CACHE": str(cache)}
    command = [
        sys.executable,
        "-m",
        "mist_core",
        "--run-dir",
        str(runs),
        "train",
        "--preset",
        "demo-cpu",
        "--set",
        f"precision={precision}",
    ]
    before = set(runs.iterdir()) if runs.exists() else set()
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    [run] = [p for p in runs.iterdir() if p not in before]
    rows = json.loads((run / "summary.json").read_text())["mi"]
    by_encoder: dict[str, list[float]] = {}
    for row in rows:
        by_encoder.setdefault(row["encoder"], []).append(row["mi"])
    return seconds, {name: statistics.fmean(v) for name, v in by_encoder.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_speed", description=__doc__)
    parser.add_argument("--precision", default="float32", choices=("float32", "auto"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        f"`python -m bench.demo_speed --precision {args.precision} --threads {args.threads}`: "
        f"{cpu_model()}; {environment()}.",
        "",
        "| repeat | plain compute (s) | demo cold (s) | cold / plain | demo warm (s) | "
        "warm / plain | trained MI (mean, nats) | random-init MI (mean) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="mist-demo-speed-") as folder:
        for repeat in range(1, args.repeats + 1):
            plain = NAN
            if not args.skip_plain:
                plain = plain_compute(args.threads)
                print(f"repeat {repeat}: plain compute {plain:.1f} s", flush=True)
            times, mi = {"cold": NAN, "warm": NAN}, {}
            cache = Path(folder) / f"cache-{repeat}"
            for kind in ("cold", "warm") if not args.skip_demo else ():
                times[kind], mi = demo(args.precision, args.threads, Path(folder) / "runs", cache)
                print(f"repeat {repeat}: demo {kind} {times[kind]:.1f} s, MI {mi}", flush=True)
            lines.append(
                f"| {repeat} | {plain:.1f} | {times['cold']:.1f} | {times['cold'] / plain:.2f} | "
                f"{times['warm']:.1f} | {times['warm'] / plain:.2f} | "
                f"{mi.get('trained', NAN):.2f} | {mi.get('random_init', NAN):.2f} |"
            )
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        write_readme_block(f"demo-speed-{args.precision}", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
