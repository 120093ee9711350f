"""What a landmark experiment will cost before it starts: memory (checked) and time (rough).

:func:`estimate_resources` adds up, from the config alone, the memory a training run needs
at its peak on top of the process it runs in; :func:`check_resources` refuses a config
whose estimate does not fit in what this machine has available, with a message that says
what would fit. The dashboard shows the estimate before Start and the CLI checks it before
training.

What is counted (host memory unless the device is a GPU, where the model and activations
are counted against the GPU's free memory instead):

- preloaded images: ``(train + test) x 3 x H x W`` bytes (kept as uint8 at the encoders'
  size); while drawing, two chunks of full-size faces (``CHUNK_FACES`` each) plus each
  worker process's own memory;
- frozen encoders' feature tables: ``(train + test) x 512`` float32 per frozen encoder
  (when ``feature_cache``);
- the encoders (11.2 M parameters each; a trained one also has its gradients and Adam's
  two moments: 4x) and the heads;
- activations of one training step: ``MEMORY_PER_PIXEL`` bytes per pixel per image for each
  trained encoder (measured: 450-485 for float32, 240-260 for bfloat16);
- the training log (``LOG_ROW_BYTES`` per row, one row per step per estimator);
- drawn faces not preloaded: the DataLoader workers and their prefetched batches; CelebA
  not preloaded: the image store's decoding workers while it is built (the store itself
  is a memory map: page cache, not the process's own memory);
- ``SLACK`` for the allocator and everything else.

Calibration (2-core VM, torch CPU, peak RSS of a fresh process above its idle state while
it prepares, trains one epoch and evaluates): 600 + 200 faces at 64 x 52 use 0.49-0.52 GB,
estimated 0.91 GB; 300 + 100 faces at 128 x 104, batch 32, use 0.59-0.60 GB, estimated
1.04 GB (``tests/unit/test_resources.py`` checks that the estimate stays above a real run).
The part that grows with the number of images (images, feature tables, log) is counted
exactly, so large configs are estimated more closely than these small ones. Times assume
an idle machine, ~17 ms per drawn face per core and ~30 G multiply-adds per second per
core for the encoders (CPU), and are rough (+-2x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mist_core.data.landmarks import CELEBA_SIZE
from mist_core.encoders import ENCODER_PRESETS
from mist_core.experiment import ExperimentConfig
from mist_core.machine import available_memory_bytes, cpu_cores

__all__ = [
    "MEMORY_FRACTION",
    "ResourceError",
    "ResourceEstimate",
    "available_memory_bytes",
    "check_resources",
    "estimate_resources",
]

#: A config fits when its estimate is at most this part of the available memory.
MEMORY_FRACTION = 0.8
#: CelebA's split sizes (``train_size``/``test_size`` of None take the whole split).
CELEBA_SPLITS = {"train": 162_770, "test": 19_962}
SOURCE_SIZE = CELEBA_SIZE  # both datasets' images, before the resize to image_size
ENCODER_PARAMETERS = 11_176_512  # a ResNet18 without its classifier
FEATURES = 512
#: Activations kept for the backward pass of a ResNet18 training step, bytes per input
#: pixel per image (measured 450-485 in float32, 240-260 in bfloat16; rounded up).
MEMORY_PER_PIXEL = 600
#: A frozen encoder's forward pass without gradients (transient), bytes per pixel per image.
INFERENCE_PER_PIXEL = 200
DRAW_WORKER_BYTES = 64 * 2**20  # a face-drawing worker's own memory (measured 14 MB)
LOADER_WORKER_BYTES = 150 * 2**20  # a DataLoader worker's own memory
LOG_ROW_BYTES = 250  # one (step, epoch, split, name, value) row, list and DataFrame
SLACK = (1.2, 150 * 2**20)  # x factor and + bytes: allocator, DataLoader, pandas, ...
DRAW_SECONDS = 0.017  # one 218 x 178 face, one core
DECODE_SECONDS = 0.004  # one CelebA JPEG, one core
CPU_MACS_PER_CORE = 30e9  # ResNet18 multiply-adds per second per core (measured ~33e9)
GPU_MACS = 10e12  # a CUDA device, rough
RESNET18_MACS = 1.82e9 / (224 * 224)  # per input pixel, forward pass
#: Chunk of faces drawn at once (synthetic_faces.CHUNK_FACES; kept in step by a test).
CHUNK_FACES = 256

_GB = 1e9


class ResourceError(ValueError):
    """A config needs more memory than this machine has available; the message says what
    would fit."""


@dataclass(frozen=True)
class ResourceEstimate:
    """What a config will cost, from :func:`estimate_resources`.

    Attributes:
        memory_bytes: peak host memory the run needs above its idle process (an upper
            estimate).
        available_bytes: host memory available now (``None``: unknown).
        seconds: rough time of the whole run, preparation included (``None``: unknown).
        fits: whether ``memory_bytes`` is at most ``MEMORY_FRACTION`` of the available
            memory (and the GPU's, for a GPU run); ``True`` when nothing is known.
        message: plain words, e.g. "about 1.2 GB of memory (this machine has 18 GB
            available) and roughly 3 minutes"; says what would fit when it does not.
        device_memory_bytes: for a GPU run, the GPU memory it needs (model, activations).
        device_available_bytes: the GPU's free memory (``None``: unknown or not a GPU).
        parts: ``{what: bytes}`` of ``memory_bytes`` before the slack.
    """

    memory_bytes: int
    available_bytes: int | None
    seconds: float | None
    fits: bool
    message: str
    device_memory_bytes: int | None = None
    device_available_bytes: int | None = None
    parts: dict[str, int] = field(default_factory=dict, compare=False, hash=False)


# --- the GPU ---------------------------------------------------------------------------------


def _gpu(device: str) -> tuple[bool, int | None]:
    """Whether ``device`` means a CUDA GPU here, and its free memory (bytes) if known."""
    if device == "cpu" or device == "mps":
        return False, None
    import torch

    if not torch.cuda.is_available():
        return False, None
    index = int(device.split(":")[1]) if ":" in device else None
    try:
        free, _ = torch.cuda.mem_get_info(index)
    except (RuntimeError, AssertionError, ValueError):
        return True, None
    return True, int(free)


# --- the estimate --------------------------------------------------------------------------


def _sizes(config: ExperimentConfig) -> tuple[int, int]:
    n_train = config.train_size if config.train_size is not None else CELEBA_SPLITS["train"]
    n_test = config.test_size if config.test_size is not None else CELEBA_SPLITS["test"]
    if config.dataset == "celeba":
        n_train, n_test = min(n_train, CELEBA_SPLITS["train"]), min(n_test, CELEBA_SPLITS["test"])
    return n_train, n_test


def _head_parameters(config: ExperimentConfig) -> int:
    """Rough parameter count of all q(landmark | representation) and q(landmark) flows."""

    def mlp(inputs: int, widths: tuple[int, ...], outputs: int) -> int:
        sizes = (inputs, *widths, outputs)
        return sum((a + 1) * b for a, b in zip(sizes, sizes[1:], strict=False))

    pairs = len(config.encoders) * len(config.landmarks)
    conditional = mlp(FEATURES + 2, config.hidden_dims, 64) * config.n_transforms
    marginal = mlp(2, config.marginal_hidden_dims, 64) * config.n_transforms
    return pairs * conditional + len(config.landmarks) * marginal


def _memory_parts(config: ExperimentConfig, n_train: int, on_gpu: bool) -> dict[str, int]:
    """``{what: bytes}`` of host memory, and of GPU memory under ``"gpu:..."`` keys."""
    _, n_test = _sizes(config)
    n_all = n_train + n_test
    height, width = config.image_size
    pixels = height * width
    source = 3 * SOURCE_SIZE[0] * SOURCE_SIZE[1]  # one full-size uint8 image
    batch = config.batch_size
    trained = [e for e in config.encoders if ENCODER_PRESETS[e].trainable]
    frozen = [e for e in config.encoders if not ENCODER_PRESETS[e].trainable]
    cores = cpu_cores()
    parts: dict[str, int] = {}
    if config.preload:
        parts["images"] = n_all * 3 * pixels
        # while preparing: drawn (or decoded) full-size images and their float resize
        chunk = 2 * CHUNK_FACES * source if config.dataset == "synthetic" else 0
        parts["preparation"] = chunk + 2 * batch * source * 4
        if config.dataset == "synthetic" and n_all >= 256:
            parts["drawing workers"] = cores * DRAW_WORKER_BYTES
    elif config.dataset == "celeba":  # the image store: a memory map (page cache) and,
        # while it is built, one decoding worker a core, each a chunk of full-size images
        parts["storing"] = cores * (LOADER_WORKER_BYTES + 2 * 256 * source * 4)
    else:
        loaders = max(1, config.num_workers)
        parts["loading"] = (
            loaders * 2 * batch * source * 4 + config.num_workers * LOADER_WORKER_BYTES
        )
    if config.feature_cache and frozen:
        parts["feature tables"] = len(frozen) * n_all * FEATURES * 4
    model = (len(frozen) + 4 * len(trained)) * ENCODER_PARAMETERS * 4
    model += 4 * _head_parameters(config) * 4
    live = len(trained) + (0 if config.feature_cache else len(frozen))
    activations = (
        batch
        * pixels
        * max(
            len(trained) * MEMORY_PER_PIXEL + (live - len(trained)) * INFERENCE_PER_PIXEL,
            INFERENCE_PER_PIXEL,  # computing the features, evaluating
        )
    )
    prefix = "gpu:" if on_gpu else ""
    parts[prefix + "model"] = model
    parts[prefix + "activations"] = activations
    if on_gpu:  # the host keeps a copy of the weights while they are built and moved
        parts["model (host copy)"] = len(config.encoders) * ENCODER_PARAMETERS * 4
    n_fit = n_train - int(round(n_train * config.valid_fraction))
    steps = config.epochs * math.ceil(n_fit / batch)
    rows = steps * (1 + len(config.encoders) * len(config.landmarks))
    parts["training log"] = rows * LOG_ROW_BYTES
    return parts


def _with_slack(total: int) -> int:
    factor, extra = SLACK
    return int(total * factor) + extra


def _host_bytes(config: ExperimentConfig, n_train: int, on_gpu: bool) -> int:
    parts = _memory_parts(config, n_train, on_gpu)
    return _with_slack(sum(v for k, v in parts.items() if not k.startswith("gpu:")))


def _seconds(config: ExperimentConfig, on_gpu: bool) -> float:
    n_train, n_test = _sizes(config)
    cores = cpu_cores()
    pixels = config.image_size[0] * config.image_size[1]
    forward = RESNET18_MACS * pixels / (GPU_MACS if on_gpu else CPU_MACS_PER_CORE * cores)
    trained = sum(ENCODER_PRESETS[e].trainable for e in config.encoders)
    frozen = len(config.encoders) - trained
    per_image = DRAW_SECONDS if config.dataset == "synthetic" else DECODE_SECONDS
    n_valid = int(round(n_train * config.valid_fraction))
    n_fit = n_train - n_valid
    seconds = 0.0
    if config.preload or config.dataset == "celeba":  # decoded once (CelebA: the store)
        seconds += (n_train + n_test) * per_image / cores
    else:
        loaders = max(1, min(config.num_workers, cores))
        seconds += (config.epochs * n_train + n_test) * per_image / loaders
    cached = frozen if config.feature_cache else 0
    seconds += (n_train + n_test) * cached * forward  # the feature tables, once
    per_epoch = n_fit * (3 * trained + frozen - cached) * forward
    per_epoch += n_valid * (trained + frozen - cached) * forward
    seconds += config.epochs * per_epoch
    seconds += n_test * (trained + frozen - cached) * forward
    return seconds


def _gb(n: float) -> str:
    value = n / _GB
    return f"{value:.1f} GB" if value < 10 else f"{value:.0f} GB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} seconds"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} minutes"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def _largest_train_size(config: ExperimentConfig, budget: float, on_gpu: bool) -> int:
    """The most training images whose estimate stays within ``budget`` bytes (0: none)."""
    small = _host_bytes(config, 2, on_gpu)
    if small > budget:
        return 0
    slope = (_host_bytes(config, 1_002, on_gpu) - small) / 1_000
    if slope <= 0:
        return 1_000_000
    return max(0, int(2 + (budget - small) / slope))


def _round_down(n: int) -> int:
    """A readable number just below ``n``: 590,123 -> 590,000."""
    if n < 100:
        return n
    unit = 10 ** (len(str(n)) - 2)
    return n // unit * unit


def estimate_resources(config: ExperimentConfig) -> ResourceEstimate:
    """The memory (an upper estimate) and time (rough) ``config`` needs, and whether it
    fits in what this machine has available now."""
    on_gpu, gpu_free = _gpu(config.device)
    n_train, _ = _sizes(config)
    parts = _memory_parts(config, n_train, on_gpu)
    memory = _host_bytes(config, n_train, on_gpu)
    gpu_memory = (
        _with_slack(sum(v for k, v in parts.items() if k.startswith("gpu:"))) if on_gpu else None
    )
    available = available_memory_bytes()
    seconds = _seconds(config, on_gpu)
    host_fits = available is None or memory <= MEMORY_FRACTION * available
    gpu_fits = gpu_memory is None or gpu_free is None or gpu_memory <= MEMORY_FRACTION * gpu_free
    where = f"{cpu_cores()} CPU cores" if not on_gpu else "the GPU"
    time_words = f"roughly {_duration(seconds)} on {where}"
    if host_fits and gpu_fits:
        have = f" (this machine has {_gb(available)} available)" if available is not None else ""
        gpu_words = ""
        if gpu_memory is not None:
            free = f" of {_gb(gpu_free)} free" if gpu_free is not None else ""
            gpu_words = f", {_gb(gpu_memory)} of GPU memory{free}"
        message = f"about {_gb(memory)} of memory{have}{gpu_words}, and {time_words}"
        return ResourceEstimate(
            memory, available, seconds, True, message, gpu_memory, gpu_free, parts
        )
    what = "faces" if config.dataset == "synthetic" else "images"
    if not host_fits:
        assert available is not None
        message = (
            f"{n_train:,} training {what} at {config.image_size[0]} x {config.image_size[1]} "
            f"need about {_gb(memory)} of memory; this machine has {_gb(available)} available."
        )
        most = _largest_train_size(config, MEMORY_FRACTION * available, on_gpu)
        if most >= 2:
            advice = [f"at most ~{_round_down(most):,} training {what}"]
            if config.preload:
                advice += ["smaller images", "preload off"]
        else:  # even two images do not fit: one step's activations are too big
            advice = ["a smaller batch size", "smaller images"]
        message += " Use " + ", ".join(advice[:-1]) + (" or " if len(advice) > 1 else "")
        message += advice[-1] + "."
    else:
        assert gpu_memory is not None and gpu_free is not None
        message = (
            f"this run needs about {_gb(gpu_memory)} of GPU memory; the GPU has "
            f"{_gb(gpu_free)} free. Use a smaller batch size or smaller images."
        )
    return ResourceEstimate(
        memory, available, seconds, False, message, gpu_memory, gpu_free, parts
    )


def check_resources(config: ExperimentConfig) -> ResourceEstimate:
    """:func:`estimate_resources`, raising :class:`ResourceError` (a ``ValueError``) with its
    message when the config does not fit."""
    estimate = estimate_resources(config)
    if not estimate.fits:
        raise ResourceError(estimate.message)
    return estimate
