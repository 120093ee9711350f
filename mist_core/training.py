"""Training and evaluating MI estimators: ``train_mi_estimator``, ``evaluate_mi``, ``estimate_mi``.

Data can be given as a ``DataLoader`` (or any iterable) of batches, where a batch is a dict
of named tensors or a tuple ``(x, y)``, or directly as a tuple ``(x, y)`` / dict of tensors
or arrays, which are then batched here. The training loop is one function that reads top to
bottom; it knows nothing about threads or UIs: a caller streams progress through
``callback`` and cancels through ``stop_event``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, random_split

from mist_core import distributed
from mist_core._rng import GLOBAL_RNG_LOCK, seeded
from mist_core.estimators import ESTIMATORS, build_estimator
from mist_core.marginals import fit_marginal_map

__all__ = [
    "EstimateResult",
    "Progress",
    "ResumeFrom",
    "TrainState",
    "estimate_mi",
    "evaluate_mi",
    "resolve_device",
    "train_mi_estimator",
]

logger = logging.getLogger(__name__)

ArrayLike = Tensor | np.ndarray
Data = DataLoader | Iterable | tuple | list | Mapping

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


@dataclass(frozen=True)
class Progress:
    """What the training loop reports after every step (``split="train"``) and validation.

    ``mi`` holds the batch estimate (train) or the validation-set estimate per pair, in nats.
    """

    step: int
    epoch: int
    split: str
    loss: float
    mi: dict[str, float]
    total_steps: int | None
    samples: int
    elapsed_s: float


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint needs, handed to ``train_mi_estimator(checkpoint=...)``.

    ``epoch`` counts completed epochs; ``batches_in_epoch`` the batches done in the next one
    (non-zero when training stopped mid-epoch). ``reason``: ``"epoch"``, ``"stopped"``,
    ``"early_stopped"`` or ``"finished"``.
    """

    estimator: nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    epoch: int
    batches_in_epoch: int
    reason: str


@dataclass(frozen=True)
class ResumeFrom:
    """Where a resumed run starts: counters from a :class:`TrainState`, optimizer state."""

    step: int
    epoch: int
    batches_in_epoch: int = 0
    optimizer_state: dict | None = None


def make_optimizer(
    name: str, params: Sequence[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """The optimizer the training loop uses: ``"adam"``, ``"adamw"`` or ``"sgd"``.

    Adam and AdamW take their fused kernels (one pass over all the parameters instead of a
    loop of small ops per tensor) where torch has them: floating-point parameters on the
    CPU or a CUDA device. The update is the same algorithm; float rounding may differ.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    options: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    params = list(params)
    if name in ("adam", "adamw") and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    ):
        options["fused"] = True
    return OPTIMIZERS[name](params, **options)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was asked for but no CUDA device is available; use 'cpu' or 'auto'"
        )
    return device


class _DictDataset(Dataset):
    """Rows of named, equally long tensors."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all variables need the same number of samples, got {lengths}")
        self.tensors = dict(tensors)
        self.length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {name: t[index] for name, t in self.tensors.items()}


def _as_tensor(value: ArrayLike) -> Tensor:
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(1)  # a vector of N scalars is N samples of a 1-d variable
    return tensor


def _as_dataset(data: tuple | list | Mapping) -> _DictDataset:
    if isinstance(data, Mapping):
        return _DictDataset({name: _as_tensor(v) for name, v in data.items()})
    if len(data) != 2:
        raise ValueError(
            f"tensor data must be a pair (x, y) or a dict of tensors, got {len(data)} items"
        )
    return _DictDataset({"x": _as_tensor(data[0]), "y": _as_tensor(data[1])})


def _is_tensor_data(data: Any) -> bool:
    if isinstance(data, Mapping):
        return all(isinstance(v, (Tensor, np.ndarray)) for v in data.values())
    return isinstance(data, (tuple, list)) and all(
        isinstance(v, (Tensor, np.ndarray)) for v in data
    )


def _check_data(data: Any) -> None:
    if _is_tensor_data(data):
        return
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be a DataLoader (or iterable) of batches, a tuple (x, y) of tensors, "
            f"or a dict of tensors; got {type(data).__name__}"
        )


def _loader(data: Data, batch_size: int, shuffle: bool, seed: int | None) -> Iterable:
    _check_data(data)
    if _is_tensor_data(data):
        generator = torch.Generator()  # never torch's global one (see experiment.py)
        if seed is None:
            generator.seed()  # a fresh random order
        else:
            generator.manual_seed(seed)
        return DataLoader(
            _as_dataset(data), batch_size=batch_size, shuffle=shuffle, generator=generator
        )
    return data


def _split_validation(
    data: Data, fraction: float, batch_size: int, seed: int | None
) -> tuple[Iterable, Iterable | None]:
    """Hold out ``fraction`` of the training samples for validation, when the data allows it."""
    _check_data(data)
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    if _is_tensor_data(data):
        dataset: Dataset = _as_dataset(data)
        kwargs: dict[str, Any] = {"batch_size": batch_size}
    elif isinstance(data, DataLoader) and hasattr(data.dataset, "__len__") and data.batch_size:
        dataset = data.dataset
        kwargs = {
            "batch_size": data.batch_size,
            "collate_fn": data.collate_fn,
            "num_workers": data.num_workers,
            "pin_memory": data.pin_memory,
            "drop_last": data.drop_last,
        }
    else:
        logger.warning(
            "cannot split validation data from %s; training without validation",
            type(data).__name__,
        )
        return data, None
    n_valid = int(round(len(dataset) * fraction))
    if n_valid < 1 or n_valid >= len(dataset):
        return _loader(data, batch_size, True, seed), None
    train_set, valid_set = random_split(
        dataset, [len(dataset) - n_valid, n_valid], generator=generator
    )
    train = DataLoader(train_set, shuffle=True, generator=generator, **kwargs)
    valid = DataLoader(
        valid_set, shuffle=False, generator=torch.Generator(), **{**kwargs, "drop_last": False}
    )
    return train, valid


def _to_batch(batch: Any, device: torch.device) -> dict[str, Tensor]:
    if isinstance(batch, Mapping):
        named = dict(batch)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        named = {"x": batch[0], "y": batch[1]}
    else:
        raise TypeError(
            f"a batch must be a dict of named tensors or a pair (x, y), got {type(batch).__name__}"
        )
    out = {}
    for name, value in named.items():
        tensor = torch.as_tensor(value)
        if tensor.is_floating_point():
            tensor = tensor.float()
        if tensor.ndim == 1 and name in ("x", "y"):
            tensor = tensor.unsqueeze(1)
        out[name] = tensor.to(device, non_blocking=True)
    return out


def _batch_size_of(batch: Mapping[str, Tensor]) -> int:
    return len(next(iter(batch.values())))


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _evaluate(
    estimator: nn.Module, data: Iterable, device: torch.device, max_batches: int | None = None
) -> tuple[float, dict[str, tuple[float, float, int]]]:
    """Mean loss, and per pair (mean, standard error, n) of the per-sample terms."""
    was_training = estimator.training
    estimator.eval()
    try:
        loss_sum, n_total = 0.0, 0
        sums: dict[str, list[float]] = {}
        for index, raw in enumerate(data):
            if max_batches is not None and index >= max_batches:
                break
            batch = _to_batch(raw, device)
            n = _batch_size_of(batch)
            if n < 2 and n_total > 0:
                continue  # a trailing single sample has no in-batch negatives; skip it
            terms = estimator.batch_terms(batch)
            loss_sum += float(terms.loss) * n
            n_total += n
            for name, values in terms.log_ratios.items():
                values = values.double()
                acc = sums.setdefault(name, [0.0, 0.0, 0])
                acc[0] += float(values.sum())
                acc[1] += float((values * values).sum())
                acc[2] += values.numel()
    finally:
        estimator.train(was_training)
    if n_total == 0:
        raise ValueError("the evaluation data yielded no batches")
    stats = {}
    for name, (total, squares, count) in sums.items():
        mean = total / count
        variance = max(squares / count - mean * mean, 0.0)
        stats[name] = (mean, math.sqrt(variance / max(count - 1, 1)), count)
    return loss_sum / n_total, stats


def evaluate_mi(
    estimator: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    return_std_error: bool = False,
) -> Any:
    """Estimate MI on ``data`` with a trained estimator, in nats.

    Runs in eval mode without gradients, averages the per-sample terms weighted by the
    number of samples, and leaves the module's train/eval mode as it found it.

    Returns:
        ``{"I(x;y)": float}`` per pair, or a float when there is one pair. With
        ``return_std_error=True``, a tuple ``(values, standard_errors)`` of that form; the
        standard error is that of the mean of the per-sample terms.
    """
    device = _module_device(estimator) if device is None else resolve_device(device)
    _, stats = _evaluate(estimator, _loader(data, batch_size, False, None), device, max_batches)
    values = {name: s[0] for name, s in stats.items()}
    errors = {name: s[1] for name, s in stats.items()}
    if len(values) == 1:
        (value,), (error,) = values.values(), errors.values()
        return (value, error) if return_std_error else value
    return (values, errors) if return_std_error else values


def _check_finite(loss: Tensor, log_ratios: Mapping[str, Tensor], step: int) -> None:
    if torch.isfinite(loss):
        return
    bad = [name for name, values in log_ratios.items() if not torch.isfinite(values).all()]
    where = f" (non-finite estimates for {', '.join(bad)})" if bad else ""
    raise FloatingPointError(
        f"the loss became {float(loss.detach())} at step {step}{where}; lower the learning rate, "
        "standardise the data, or use normalization='emanorm'"
    )


def train_mi_estimator(
    estimator: nn.Module,
    train_data: Data | None = None,
    *,
    data: Data | None = None,
    valid_data: Data | None = None,
    valid_percentage: float = 0.1,
    max_epochs: int | None = None,
    max_iterations: int | None = None,
    batch_size: int = 64,
    optimizer: str = "adam",
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    early_stopping: bool = True,
    patience: int = 5,
    eval_every: int | None = None,
    device: str | torch.device | None = "auto",
    verbose: bool = False,
    callback: Callable[[Progress], None] | None = None,
    stop_event: threading.Event | None = None,
    seed: int | None = None,
    checkpoint: Callable[[TrainState], None] | None = None,
    resume: ResumeFrom | None = None,
) -> pd.DataFrame:
    """Train ``estimator`` by minimising its loss, and return the log.

    Args:
        estimator: an :class:`~mist_core.MIEstimator`, ``MultiMIEstimator`` or
            ``TransformedMIEstimator`` (anything with ``batch_terms(batch)``).
        train_data: batches (see the module docstring); ``data`` is the seed's alias.
        valid_data: validation batches; when ``None``, ``valid_percentage`` of the training
            samples are held out (0 disables validation).
        max_epochs, max_iterations: stop after whichever comes first (at least one).
        batch_size: used when the data are tensors, not a DataLoader.
        optimizer, lr, weight_decay, grad_clip: ``"adam"``, ``"adamw"`` or ``"sgd"``, its
            learning rate and weight decay, and a max gradient norm (``None``: no clipping).
        early_stopping, patience: stop when the validation loss has not improved for
            ``patience`` validations, and restore the weights of the best one.
        eval_every: validate every this many steps (default: once per epoch, or 10 times
            over a ``max_iterations`` budget).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; the estimator is moved there.
        verbose: show a tqdm progress bar.
        callback: called with a :class:`Progress` after every step and every validation.
        stop_event: when set, training stops after the current step.
        seed: seeds torch and the data order (each epoch's order is fixed by seed and epoch).
        checkpoint: called with a :class:`TrainState` at the end of every epoch, when
            ``stop_event`` ends training, and at the end; it can save what it needs.
        resume: continue a run from a checkpoint: the step and epoch counters, the
            optimizer state, and the batches of the interrupted epoch to skip. The
            estimator's weights must already be loaded.

    Returns:
        A long-form ``pandas.DataFrame`` with columns ``step, epoch, split, name, value``
        (names: ``loss`` and ``I(x;y)`` per pair). ``df.attrs`` holds ``stopped`` (True if
        ``stop_event`` ended it), ``early_stopped``, ``best_step``, ``steps`` (the step
        counter at the end, including steps before a resume) and ``epochs`` (completed).
    """
    if train_data is not None and data is not None:
        raise ValueError("give the training data once: train_data or data, not both")
    train_data = train_data if train_data is not None else data
    if train_data is None:
        raise ValueError("no training data: pass train_data=... (or data=...)")
    if max_epochs is None and max_iterations is None:
        raise ValueError("set max_epochs or max_iterations (or both)")
    for name, value in (("max_epochs", max_epochs), ("max_iterations", max_iterations)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= valid_percentage < 1.0:
        raise ValueError(f"valid_percentage must lie in [0, 1), got {valid_percentage}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if not hasattr(estimator, "batch_terms"):
        raise TypeError(
            f"{type(estimator).__name__} is not an MI estimator (no batch_terms method)"
        )
    if seed is not None:
        with GLOBAL_RNG_LOCK:  # not in the middle of another thread's seeded build
            torch.manual_seed(seed)

    device = resolve_device(device)
    estimator.to(device)
    if valid_data is None and valid_percentage > 0:
        train_loader, valid_loader = _split_validation(
            train_data, valid_percentage, batch_size, seed
        )
    else:
        train_loader = _loader(train_data, batch_size, True, seed)
        valid_loader = (
            _loader(valid_data, batch_size, False, None) if valid_data is not None else None
        )

    params = [p for p in estimator.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the estimator has no trainable parameters")
    opt = make_optimizer(optimizer, params, lr=lr, weight_decay=weight_decay)

    try:
        steps_per_epoch: int | None = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    total = max_iterations
    if max_epochs is not None and steps_per_epoch is not None:
        total = min(total or math.inf, max_epochs * steps_per_epoch)  # type: ignore[assignment]
    if eval_every is None and max_iterations is not None and total is not None:
        eval_every = max(1, int(total) // 10)
    total = int(total) if total is not None else None

    rows: list[tuple[int, int, str, str, float]] = []
    best_loss, best_state, best_step, bad_evals = math.inf, None, 0, 0
    step = resume.step if resume is not None else 0
    epoch = resume.epoch if resume is not None else 0
    batches_in_epoch = resume.batches_in_epoch if resume is not None else 0
    if resume is not None and resume.optimizer_state is not None:
        try:
            opt.load_state_dict(resume.optimizer_state)
        except ValueError as error:  # e.g. saved before the heads' weights were stacked
            warnings.warn(
                f"the saved optimizer state does not fit this model's parameters ({error}); "
                "training resumes with the saved weights and a fresh optimizer state",
                RuntimeWarning,
                stacklevel=2,
            )
    samples = 0
    outcome = "finished"  # or "stopped" (stop_event) or "early_stopped"
    last_checkpoint = -1
    start = time.perf_counter()
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="training", unit="step")

    def report(split: str, loss: float, mi: dict[str, float]) -> None:
        if callback is not None:
            elapsed = time.perf_counter() - start
            callback(Progress(step, epoch, split, loss, mi, total, samples, elapsed))

    def validate() -> bool:
        """Log a validation pass; return True when early stopping says stop."""
        nonlocal best_loss, best_state, best_step, bad_evals
        if valid_loader is None:
            return False
        loss, stats = _evaluate(estimator, valid_loader, device)
        rows.append((step, epoch, "valid", "loss", loss))
        rows.extend((step, epoch, "valid", name, s[0]) for name, s in stats.items())
        report("valid", loss, {n: s[0] for n, s in stats.items()})
        if loss < best_loss:
            best_loss, best_step, bad_evals = loss, step, 0
            if early_stopping:
                best_state = copy.deepcopy(estimator.state_dict())
            return False
        bad_evals += 1
        return early_stopping and bad_evals >= patience

    def save(reason: str) -> None:
        nonlocal last_checkpoint
        if checkpoint is not None and last_checkpoint != step:
            checkpoint(TrainState(estimator, opt, step, epoch, batches_in_epoch, reason))
            last_checkpoint = step

    def budget_left() -> bool:
        return (max_iterations is None or step < max_iterations) and (
            max_epochs is None or epoch < max_epochs
        )

    estimator.train()
    try:
        while outcome == "finished" and budget_left():
            for raw in _epoch_batches(train_loader, epoch, seed, skip=batches_in_epoch):
                batch = _to_batch(raw, device)
                terms = estimator.batch_terms(batch)
                _check_finite(terms.loss, terms.log_ratios, step)
                opt.zero_grad(set_to_none=True)
                terms.loss.backward()
                distributed.all_reduce_gradients(params)  # no-op in a single process
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                distributed.broadcast_buffers(estimator)

                step += 1
                batches_in_epoch += 1
                samples += _batch_size_of(batch)
                # One device sync per step for the whole log line.
                with torch.no_grad():
                    values = torch.stack(
                        [terms.loss.detach()]
                        + [v.detach().mean() for v in terms.log_ratios.values()]
                    ).tolist()
                names = ["loss", *terms.log_ratios]
                rows.extend(
                    (step, epoch, "train", n, v) for n, v in zip(names, values, strict=True)
                )
                report("train", values[0], dict(zip(names[1:], values[1:], strict=True)))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{values[0]:.3f}")
                asked = stop_event is not None and stop_event.is_set()
                if distributed.any_rank(asked, device):  # every rank stops at the same step
                    outcome = "stopped"
                    break
                if max_iterations is not None and step >= max_iterations:
                    break
                if eval_every is not None and step % eval_every == 0 and validate():
                    outcome = "early_stopped"
                    break
            else:  # the epoch ran to its end
                if batches_in_epoch == 0:
                    raise ValueError("the training data yielded no batches")
                epoch += 1
                batches_in_epoch = 0
                if eval_every is None and validate():
                    outcome = "early_stopped"
                save("epoch")
                continue
            break
        if step == 0:
            raise ValueError("the training data yielded no batches")
        if outcome == "finished" and valid_loader is not None and rows[-1][2] != "valid":
            validate()
        if early_stopping and best_state is not None and outcome != "stopped":
            estimator.load_state_dict(best_state)
        save(outcome)
    finally:
        if bar is not None:
            bar.close()
    log = pd.DataFrame(rows, columns=["step", "epoch", "split", "name", "value"])
    log.attrs.update(
        stopped=outcome == "stopped",
        early_stopped=outcome == "early_stopped",
        best_step=best_step,
        steps=step,
        epochs=epoch,
    )
    return log


def _epoch_batches(loader: Iterable, epoch: int, seed: int | None, skip: int) -> Iterable:
    """The batches of one epoch, in an order fixed by ``(seed, epoch)`` when the loader has a
    generator, so a run resumed mid-epoch skips exactly the batches it had already seen."""
    generator = getattr(loader, "generator", None)
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)  # the shards' order is fixed by the sampler's seed and epoch
    elif seed is not None and isinstance(generator, torch.Generator):
        generator.manual_seed(seed * 1_000_003 + epoch)
    return itertools.islice(iter(loader), skip, None)


@dataclass(frozen=True)
class EstimateResult:
    """An MI estimate from :func:`estimate_mi`: ``mi`` and ``std_error`` in nats."""

    mi: float
    std_error: float
    estimator: str
    log: pd.DataFrame = field(repr=False)
    model: nn.Module = field(repr=False)
    n_train: int = 0
    n_test: int = 0
    seconds: float = 0.0


def estimate_mi(
    x: ArrayLike,
    y: ArrayLike,
    estimator: str = "doe",
    *,
    max_iterations: int = 2000,
    max_epochs: int | None = None,
    batch_size: int = 128,
    hidden_dims: Sequence[int] | None = None,
    lr: float = 1e-3,
    test_fraction: float = 0.5,
    valid_percentage: float = 0.1,
    early_stopping: bool = True,
    standardize: bool | str = True,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    estimator_options: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> EstimateResult:
    """Estimate :math:`I(X; Y)` in nats from paired samples ``x: (N, D_x)``, ``y: (N, D_y)``.

    The samples are split: ``test_fraction`` is held out for the estimate; of the rest,
    ``valid_percentage`` drives early stopping. ``standardize`` maps every coordinate of x
    and y through an invertible map fitted on the training split (the MI is unchanged):
    ``True`` or ``"standardize"`` (mean 0, std 1: any units work), ``"gaussianize"`` (the
    empirical CDF, then the normal quantile: heavy tails and bounded supports become
    Gaussian-shaped marginals; see :mod:`mist_core.marginals`), or ``False`` (raw data).

    Args:
        estimator: one of :data:`mist_core.estimators.ESTIMATORS`.
        hidden_dims: network widths (default: the estimator's own).
        estimator_options: further options of the estimator's factory (e.g. ``tau``).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid names: {', '.join(ESTIMATORS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    x_t, y_t = _as_tensor(x), _as_tensor(y)
    if x_t.ndim != 2 or y_t.ndim != 2:
        raise ValueError(
            f"x and y must be (N, D) arrays, got shapes {tuple(x_t.shape)} and {tuple(y_t.shape)}"
        )
    if len(x_t) != len(y_t):
        raise ValueError(
            f"x and y must hold the same number of samples, got {len(x_t)} and {len(y_t)}"
        )
    if not (torch.isfinite(x_t).all() and torch.isfinite(y_t).all()):
        raise ValueError("x and y must be finite (found NaN or infinity)")
    n = len(x_t)
    n_test = int(round(n * test_fraction))
    if n_test < 2 or n - n_test < 2 * batch_size:
        raise ValueError(
            f"{n} samples are too few: need at least 2 test samples and {2 * batch_size} "
            "training samples; lower batch_size or test_fraction"
        )
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    train_idx, test_idx = order[n_test:], order[:n_test]
    x_train, x_test = x_t[train_idx], x_t[test_idx]
    y_train, y_test = y_t[train_idx], y_t[test_idx]
    options = dict(estimator_options or {})
    marginal_map = "standardize" if standardize is True else standardize
    if marginal_map:
        if marginal_map == "gaussianize" and "entropy_y" in options:
            raise ValueError(
                "BA's entropy_y is known in the data's own units, and Gaussianizing changes "
                "H(Y) by an unknown amount; use standardize=True (or False) with BA"
            )
        fx, fy = fit_marginal_map(marginal_map, x_train), fit_marginal_map(marginal_map, y_train)
        x_train, x_test, y_train, y_test = fx(x_train), fx(x_test), fy(y_train), fy(y_test)
        if "entropy_y" in options:  # BA: H(Y / s) = H(Y) - sum(log s)
            options["entropy_y"] = float(options["entropy_y"]) + fy.log_abs_det()

    if hidden_dims is not None:
        options["hidden_dims"] = list(hidden_dims)
    with seeded(seed):
        model = build_estimator(estimator, x_t.shape[1], y_t.shape[1], **options)
    if getattr(model, "closed_form", False):  # nothing to train: fit on the training split
        model.fit(x_train, y_train)
        log = pd.DataFrame(columns=["step", "epoch", "split", "name", "value"])
        log.attrs.update(stopped=False, early_stopped=False, best_step=0, steps=0, epochs=0)
    else:
        # Validate once per epoch (or 10 times over the budget, if that is more often): on
        # a few thousand samples a critic can overfit within the first tenth of a long
        # budget, and early stopping can only restore a point it has seen. Patience: at
        # least a tenth of the budget, or a flow that learns slowly at first is stopped
        # before it starts.
        n_fit = len(x_train) - int(len(x_train) * valid_percentage)
        eval_every = max(1, min(math.ceil(n_fit / batch_size), max_iterations // 10))
        log = train_mi_estimator(
            model,
            (x_train, y_train),
            max_iterations=max_iterations,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            valid_percentage=valid_percentage,
            early_stopping=early_stopping,
            eval_every=eval_every,
            patience=max(5, math.ceil(max_iterations / 10 / eval_every)),
            device=device,
            seed=seed,
            verbose=verbose,
        )
    mi, std_error = evaluate_mi(
        model, (x_test, y_test), batch_size=batch_size, return_std_error=True
    )
    return EstimateResult(
        mi=float(mi),
        std_error=float(std_error),
        estimator=estimator,
        log=log,
        model=model,
        n_train=len(x_train),
        n_test=n_test,
        seconds=time.perf_counter() - start,
    )
