"""mist_core against torch-mist 0.2.17, side by side in one process.

    python -m bench.peer [--threads 1,2] [--repeats 5] [--workloads heads,posterior,epoch]
        [--device cpu|cuda] [--normalization emanorm|none]

torch-mist is not a dependency of mist: install it in a venv of its own beside mist's
requirements (its pins fight ours: numpy < 2), then run this module with that venv's
Python from the repository root::

    python3.11 -m venv /tmp/peer-venv
    /tmp/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-mist==0.2.17 \\
        "numpy<2" zuko==1.6.0 pandas safetensors pillow tqdm
    /tmp/peer-venv/bin/python -m bench.peer

(torch 2.14.1 in both: the same kernels on both sides. The issue's recipe, ``pip install
torch==2.13.0 torch-mist==0.2.17 pandas``, also runs torch-mist but not mist_core, whose
encoders need torchvision.) Without torch-mist only mist_core's figures are printed.

Workloads, samples per second, median of ``--repeats``:

- **heads**: the seed's 15 DoE heads (3 representations x 5 landmarks, 512-d features,
  conditional affine autoregressive q(landmark | representation) with hidden [128, 64],
  one q(landmark) per landmark shared by its 3 heads), one Adam step per batch of 128 on
  precomputed features. torch-mist's side runs with ``normalization=None``: its
  ``emanorm`` crashes in training. mist_core's heads have EMA standardisers (the seed's),
  or none with ``--normalization none`` (the same settings as torch-mist's side).
- **posterior**: log q over the full 178 x 218 pixel grid for the 15 heads, one image.

- **epoch** (``--workloads epoch``): the seed's full model, 3 ResNet18 encoders (random init
  and "pretrained" frozen, "finetuned" trained; random weights stand in for ImageNet's,
  the compute is the same) and the 15 heads, on drawn faces at 96 x 80 and 218 x 178,
  batch 64, epochs 1 and 2 (mist_core caches the frozen encoders' features after the
  first). mist_core runs its ``LandmarkExperiment`` with its default ``precision="auto"``
  (bfloat16 training steps for the trained encoder where the hardware is fast: AMX CPUs,
  CUDA; see :mod:`mist_core.precision` for the stated tolerance); torch-mist its
  ``TransformedMIEstimator`` in a plain float32 loop, as its users run it.

``--device cuda`` runs every workload on the GPU (timings synchronise the device). The
heads stay float32 on both sides; mixed precision is in the encoders' training steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from bench.record import environment
from mist_core import MultiMIEstimator
from mist_core.distributions import conditional_transformed_normal, transformed_normal
from mist_core.estimators import DoE
from mist_core.experiment import instantiate_estimators
from mist_core.precision import resolve_precision
from mist_core.training import make_optimizer

REPRESENTATIONS = ("random_init", "pretrained", "finetuned")
LANDMARKS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
FEATURES, HIDDEN, MARGINAL_HIDDEN, BATCH = 512, (128, 64), (64,), 128
GRID = (218, 178)  # rows (y), columns (x): CelebA's aligned image
#: where every workload runs (``--device``)
DEVICE = torch.device("cpu")


def _sync() -> None:
    """Wait for the device's queued work, so that a clock read after it counts it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def have_torch_mist() -> bool:
    return importlib.util.find_spec("torch_mist") is not None


# -- models -----------------------------------------------------------------------------------


def _bare_heads() -> dict:
    """The seed's 15 heads built with ``normalization=None`` (``instantiate_estimators``
    always standardises): one q(landmark) per landmark shared by its 3 heads."""
    estimators = {}
    for landmark in LANDMARKS:
        q_y = transformed_normal(2, hidden_dims=MARGINAL_HIDDEN, normalization=None)
        for name in REPRESENTATIONS:
            q_y_x = conditional_transformed_normal(
                2, context_dim=FEATURES, hidden_dims=HIDDEN, normalization=None
            )
            estimators[(name, landmark)] = DoE(q_Y_given_X=q_y_x, q_Y=q_y)
    return estimators


def mist_heads(stacked: bool = True, normalization: str | None = "emanorm") -> MultiMIEstimator:
    """The 15 heads, with EMA standardisers (the seed's) or none; ``stacked=False`` forces
    the plain per-head loop."""
    torch.manual_seed(0)
    if normalization is None:
        model = MultiMIEstimator(_bare_heads())
    else:
        model = MultiMIEstimator(
            instantiate_estimators(
                {name: FEATURES for name in REPRESENTATIONS},
                LANDMARKS,
                hidden_dims=HIDDEN,
                marginal_hidden_dims=MARGINAL_HIDDEN,
            )
        )
    model.stack_heads = stacked and model.stack_heads
    return model.to(DEVICE)


def peer_heads():  # noqa: ANN201 - a torch_mist MultiMIEstimator
    from torch_mist.distributions import conditional_transformed_normal, transformed_normal
    from torch_mist.estimators import DoE
    from torch_mist.estimators import MultiMIEstimator as PeerMulti

    torch.manual_seed(0)
    estimators = {}
    for landmark in LANDMARKS:
        q_y = transformed_normal(
            input_dim=2, hidden_dims=list(MARGINAL_HIDDEN), transform_name="affine_autoregressive"
        )
        for name in REPRESENTATIONS:
            q_y_x = conditional_transformed_normal(
                input_dim=2,
                context_dim=FEATURES,
                hidden_dims=list(HIDDEN),
                transform_name="conditional_affine_autoregressive",
                normalization=None,
            )
            estimators[(name, landmark)] = DoE(q_Y_given_X=q_y_x, q_Y=q_y)
    return PeerMulti(estimators).to(DEVICE)


def _batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {name: torch.randn(n, FEATURES, generator=g).relu() for name in REPRESENTATIONS}
    for landmark in LANDMARKS:
        batch[landmark] = torch.randn(n, 2, generator=g) * 3 + 100
    return {k: v.to(DEVICE) for k, v in batch.items()}


# -- workloads --------------------------------------------------------------------------------


def _time_steps(
    step: Callable[[dict], None], steps: int, repeats: int, peaks: list[float] | None = None
) -> list[float]:
    """Samples per second of ``repeats`` runs of ``steps`` steps (after 5 warm-up steps).
    With ``peaks``, the matmul rate (:func:`matmul_gflops`) is measured right after each
    run and appended: this shared machine's speed drifts by tens of percent within minutes,
    so a step and the rate it is compared with must come from the same moment."""
    batches = [_batch(BATCH, seed) for seed in range(8)]
    for i in range(5):
        step(batches[i % len(batches)])
    rates = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        _sync()
        rates.append(steps * BATCH / (time.perf_counter() - start))
        if peaks is not None:
            peaks.append(matmul_gflops(repeats=5))
    return rates


def _step(loss_of: Callable[[dict], torch.Tensor], optimizer) -> Callable[[dict], None]:  # noqa: ANN001
    def step(batch: dict) -> None:
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def heads_step_mist(model: MultiMIEstimator) -> Callable[[dict], None]:
    """One training step as ``train_mi_estimator`` takes it (its optimizer factory)."""
    optimizer = make_optimizer("adam", model.parameters(), lr=1e-3)
    return _step(lambda batch: model.batch_terms(batch).loss, optimizer)


def heads_step_peer(model) -> Callable[[dict], None]:  # noqa: ANN001
    """One training step as torch-mist's ``train_mi_estimator`` takes it (plain Adam)."""
    return _step(lambda batch: model.loss(**batch), torch.optim.Adam(model.parameters(), lr=1e-3))


def heads_flops() -> int:
    """Multiply-adds x 2 of one training step, all heads, counted the usual way: the
    backward pass as twice the forward (3 x forward in all, as in the "6 N per sample" rule).

    Per head and sample the conditional MADE's layers are [2 + 512 -> 128 -> 64 -> 4] plus the
    linear context path [512 -> 4]; the marginals [2 -> 64 -> 4] are counted once each.
    (The features need no gradient here, so the step executes fewer: about 0.62 GFLOP of
    the 0.88 counted.)
    """
    conditional = (2 + FEATURES) * HIDDEN[0] + HIDDEN[0] * HIDDEN[1] + HIDDEN[1] * 4 + FEATURES * 4
    marginal = 2 * MARGINAL_HIDDEN[0] + MARGINAL_HIDDEN[0] * 4
    per_sample = len(REPRESENTATIONS) * len(LANDMARKS) * conditional + len(LANDMARKS) * marginal
    return 3 * 2 * per_sample * BATCH


def matmul_gflops(repeats: int = 20) -> float:
    """This machine's dense float32 throughput on the heads' biggest product, GFLOP/s:
    ``[128, 512] @ [512, 640]`` (one representation's 5 heads' first layers), the best of
    ``repeats`` timings of 50 products."""
    a = torch.randn(BATCH, FEATURES, device=DEVICE)
    b = torch.randn(FEATURES, 5 * (HIDDEN[0] + 4), device=DEVICE)
    for _ in range(5):
        a @ b
    best = math.inf
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        for _ in range(50):
            a @ b
        _sync()
        best = min(best, (time.perf_counter() - start) / 50)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


def posterior_seconds(model, peer: bool, repeats: int) -> list[float]:  # noqa: ANN001
    """One image: log q(landmark | features) on the full pixel grid, for all 15 heads."""
    rows, cols = GRID
    ys, xs = torch.meshgrid(torch.arange(rows) + 0.5, torch.arange(cols) + 0.5, indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2).to(DEVICE)  # [rows * cols, 2]
    generator = torch.Generator().manual_seed(0)
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            # a new image each time: torch-mist caches its densities keyed by the inputs'
            # values, so repeating one image would time its cache (0.02 s), not the maps
            features = {n: torch.randn(FEATURES, generator=generator).relu().to(DEVICE)
                        for n in REPRESENTATIONS}  # fmt: skip
            _sync()
            start = time.perf_counter()
            for (name, _), head in _heads(model, peer):
                head.q_Y_given_X.condition(features[name]).log_prob(grid)
            _sync()
            times.append(time.perf_counter() - start)
    return times[1:]


def _heads(model, peer: bool):  # noqa: ANN001, ANN202
    """``[((x_key, y_key), head)]`` of either library's MultiMIEstimator."""
    if peer:  # torch-mist keys its ModuleDict "x_key;y_key"
        return [(tuple(key.split(";")), head) for key, head in model.estimators.items()]
    return list(zip(model.pairs, model.estimators.values(), strict=True))


def _fake_imagenet_home() -> str:
    """A ``$TORCH_HOME`` whose hub cache holds random ResNet18 weights under the ImageNet
    file name, so the "pretrained" and "finetuned" encoders build offline. Timing only:
    the compute is the same as with the real weights."""
    import tempfile

    import torchvision

    home = tempfile.mkdtemp(prefix="mist-peer-torch-home-")
    checkpoints = os.path.join(home, "hub", "checkpoints")
    os.makedirs(checkpoints)
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(),
               os.path.join(checkpoints, "resnet18-f37072fd.pth"))  # fmt: skip
    return home


def epoch_seconds_mist(
    n_train: int, size: tuple[int, int], epochs: int = 2, precision: str = "auto"
) -> list[float]:
    """mist_core's landmark experiment (random init + 'pretrained' frozen, 'finetuned'
    trained; 15 heads; batch 64; frozen features cached): seconds per epoch. Epoch 1
    includes computing the frozen encoders' features; the images are drawn beforehand (as
    the peer's are)."""
    from mist_core.experiment import ExperimentConfig, LandmarkExperiment
    from mist_core.training import Progress

    os.environ["TORCH_HOME"] = _fake_imagenet_home()
    config = ExperimentConfig(
        dataset="synthetic",
        train_size=n_train,
        test_size=64,
        valid_fraction=0.0,
        image_size=size,
        encoders=REPRESENTATIONS,
        batch_size=64,
        epochs=epochs,
        device=str(DEVICE),
        precision=precision,
    )
    experiment = LandmarkExperiment(config)
    experiment.datasets()  # draw and resize the images (not timed, as for the peer)
    ends: dict[int, float] = {}

    def callback(progress: Progress) -> None:
        if progress.split == "train":
            ends[progress.epoch] = time.perf_counter()

    start = time.perf_counter()
    experiment.train(callback=callback)
    marks = [start] + [ends[e] for e in sorted(ends)][:epochs]
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def epoch_seconds_peer(n_train: int, size: tuple[int, int], epochs: int = 2) -> list[float]:
    """The seed's model with torch-mist: 3 torchvision ResNet18 (2 frozen), 15 heads,
    TransformedMIEstimator, Adam at 5e-4, batch 64: seconds per epoch."""
    import torchvision
    from torch_mist.estimators import TransformedMIEstimator
    from torch_mist.utils import freeze

    from mist_core.data.synthetic_faces import SyntheticFaces

    faces = SyntheticFaces(n_train, seed=0)
    images, marks = faces.render_many(range(n_train))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    data = {"image": x, **{k: torch.as_tensor(v, dtype=torch.float32) for k, v in marks.items()}}

    def encoder(frozen: bool) -> torch.nn.Module:
        net = torchvision.models.resnet18()
        net.fc = torch.nn.Identity()
        return freeze(net) if frozen else net

    torch.manual_seed(0)
    encoders = {"random_init": encoder(True), "pretrained": encoder(True),
                "finetuned": encoder(False)}  # fmt: skip
    model = TransformedMIEstimator(
        transforms_rename={("image", name): enc for name, enc in encoders.items()},
        base_estimator=peer_heads(),
    ).to(DEVICE)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    times = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=generator)
        _sync()
        start = time.perf_counter()
        for i in range(0, n_train, 64):
            idx = order[i : i + 64]
            loss = model.loss(**{k: v[idx].to(DEVICE) for k, v in data.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync()
        times.append(time.perf_counter() - start)
    return times


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="heads: steps per repeat")
    parser.add_argument("--workloads", default="heads,posterior", help="heads,posterior,epoch")
    parser.add_argument("--epoch-images", type=int, default=256, help="epoch: training images")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="epoch: mist_core's encoder precision (default auto: its default)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:N]. On cuda mist_core's trained encoder takes bfloat16 training "
        "steps (precision='auto'); the heads stay float32 on both sides",
    )
    parser.add_argument(
        "--normalization",
        default="emanorm",
        choices=("emanorm", "none"),
        help="heads, posterior: mist_core's standardisers (default emanorm, the seed's)",
    )
    args = parser.parse_args(argv)
    normalization = None if args.normalization == "none" else args.normalization
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible here")
    workloads = {w.strip() for w in args.workloads.split(",")}
    peer = have_torch_mist()
    if peer:
        import torch_mist  # noqa: F401

        version = getattr(sys.modules["torch_mist"], "__version__", "0.2.17")
        print(f"torch-mist {version} found; its heads run with normalization=None "
              "(its emanorm crashes in training).")  # fmt: skip
    else:
        print("torch-mist is not importable here: only mist_core is measured "
              "(see this module's docstring for the side-by-side venv).")  # fmt: skip
    print(environment(threads=False))
    if DEVICE.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(DEVICE)} ({args.device})")
    lines = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        if "heads" in workloads:
            peaks: list[float] = []
            rates = _time_steps(heads_step_mist(mist_heads(normalization=normalization)),
                                args.steps, args.repeats, peaks)  # fmt: skip
            fast = statistics.median(rates)
            plain = statistics.median(
                _time_steps(heads_step_mist(mist_heads(False, normalization)), args.steps,
                            args.repeats)
            )  # fmt: skip
            row = f"heads ({args.normalization}), {threads} thread(s): mist_core {fast:,.0f} "
            row += f"samples/s (one head at a time: {plain:,.0f})"
            if peer:
                theirs = statistics.median(
                    _time_steps(heads_step_peer(peer_heads()), args.steps, args.repeats)
                )
                row += f"; torch-mist {theirs:,.0f} samples/s; ratio {fast / theirs:.1f}x"
            flops = heads_flops()
            achieved = [flops * rate / BATCH / 1e9 for rate in rates]
            shares = sorted(a / p for a, p in zip(achieved, peaks, strict=True))
            row += (
                f"; {flops / 1e9:.3f} GFLOP a step, {statistics.median(achieved):.1f} GFLOP/s "
                f"achieved, matmul {statistics.median(peaks):.1f} GFLOP/s; each run against "
                f"the matmul rate measured just after it: median {statistics.median(shares):.1%}"
                f" (runs {', '.join(f'{x:.1%}' for x in shares)})"
            )
            print(row, flush=True)
            lines.append(row)
        if "posterior" in workloads:
            ours = statistics.median(
                posterior_seconds(mist_heads(normalization=normalization), False, args.repeats)
            )
            row = f"posterior (15 heads, {GRID[0]}x{GRID[1]} grid), {threads} thread(s): "
            row += f"mist_core {ours:.3f} s"
            if peer:
                theirs = statistics.median(posterior_seconds(peer_heads(), True, args.repeats))
                row += f"; torch-mist {theirs:.3f} s; ratio {theirs / ours:.1f}x"
            print(row, flush=True)
            lines.append(row)
        if "epoch" in workloads:
            for size in ((96, 80), (218, 178)):
                ours = epoch_seconds_mist(args.epoch_images, size, precision=args.precision)
                row = (
                    f"epoch ({args.epoch_images} images at {size[0]}x{size[1]}, batch 64), "
                    f"{threads} thread(s): mist_core (encoder training steps in "
                    f"{resolve_precision(args.precision, DEVICE)}) "
                    + ", ".join(f"{args.epoch_images / t:.1f}" for t in ours)
                    + " images/s (epochs 1, 2)"
                )
                if peer:
                    theirs = epoch_seconds_peer(args.epoch_images, size)
                    row += "; torch-mist " + ", ".join(
                        f"{args.epoch_images / t:.1f}" for t in theirs
                    )
                    row += f" images/s; ratio from epoch 2 {theirs[-1] / ours[-1]:.1f}x"
                print(row, flush=True)
                lines.append(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
