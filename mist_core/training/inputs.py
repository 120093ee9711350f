"""The data forms the training functions accept, turned into batches of named tensors.

Data can be given as a ``DataLoader`` (or any iterable) of batches, where a batch is a dict
of named tensors or a tuple ``(x, y)``, or directly as a tuple ``(x, y)`` / dict of tensors
or arrays (``[N, D]`` each, or ``[N]`` for N scalars), which are then batched here.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from mist_core._rng import seeded_permutation

__all__ = [
    "ArrayLike",
    "Data",
    "as_tensor",
    "batch_size_of",
    "epoch_batches",
    "make_loader",
    "module_device",
    "to_batch",
    "training_loaders",
]

logger = logging.getLogger("mist_core.training")  # one logger for the whole package

ArrayLike = Tensor | np.ndarray
Data = DataLoader | Iterable | tuple | list | Mapping


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


def as_tensor(value: ArrayLike) -> Tensor:
    """A float32 (or integer) tensor ``[N, D]``; a vector ``[N]`` becomes ``[N, 1]``."""
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(1)  # a vector of N scalars is N samples of a 1-d variable
    return tensor


def _as_dataset(data: tuple | list | Mapping) -> _DictDataset:
    if isinstance(data, Mapping):
        return _DictDataset({name: as_tensor(v) for name, v in data.items()})
    if len(data) != 2:
        raise ValueError(
            f"tensor data must be a pair (x, y) or a dict of tensors, got {len(data)} items"
        )
    return _DictDataset({"x": as_tensor(data[0]), "y": as_tensor(data[1])})


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


def make_loader(data: Data, batch_size: int, shuffle: bool, seed: int | None) -> Iterable:
    """Tensor data batched by a ``DataLoader`` (order fixed by ``seed``); batches as given."""
    _check_data(data)
    if _is_tensor_data(data):
        generator = torch.Generator()  # never torch's global one, which other threads seed
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
    n = len(dataset)  # type: ignore[arg-type]
    n_valid = int(round(n * fraction))
    if n_valid < 1 or n_valid >= n:
        return make_loader(data, batch_size, True, seed), None
    # The training order goes on drawing from the split's generator: without a seed, a run
    # still sees one fixed split and one fixed first-epoch order.
    generator = torch.Generator()
    order = seeded_permutation(n, 0 if seed is None else seed, generator).tolist()
    n_train = n - n_valid
    train_set, valid_set = Subset(dataset, order[:n_train]), Subset(dataset, order[n_train:])
    train = DataLoader(train_set, shuffle=True, generator=generator, **kwargs)
    valid = DataLoader(
        valid_set, shuffle=False, generator=torch.Generator(), **{**kwargs, "drop_last": False}
    )
    return train, valid


def training_loaders(
    train_data: Data,
    valid_data: Data | None,
    valid_percentage: float,
    batch_size: int,
    seed: int | None,
) -> tuple[Iterable, Iterable | None]:
    """The training batches and the validation batches (``None``: no validation).

    Without ``valid_data``, ``valid_percentage`` of the training samples are held out.
    """
    if valid_data is None and valid_percentage > 0:
        return _split_validation(train_data, valid_percentage, batch_size, seed)
    train = make_loader(train_data, batch_size, True, seed)
    valid = make_loader(valid_data, batch_size, False, None) if valid_data is not None else None
    return train, valid


def to_batch(batch: Any, device: torch.device) -> dict[str, Tensor]:
    """A batch (dict or pair ``(x, y)``) as named tensors on ``device``; ``x``/``y`` ``[N, D]``."""
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


def batch_size_of(batch: Mapping[str, Tensor]) -> int:
    """The number of samples ``N`` in a batch of named tensors."""
    return len(next(iter(batch.values())))


def module_device(module: nn.Module) -> torch.device:
    """Where a module's parameters (else buffers) live; the CPU when it has neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def epoch_batches(loader: Iterable, epoch: int, seed: int | None, skip: int) -> Iterable:
    """The batches of one epoch, in an order fixed by ``(seed, epoch)`` when the loader has a
    generator, so a run resumed mid-epoch skips exactly the batches it had already seen."""
    generator = getattr(loader, "generator", None)
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)  # the shards' order is fixed by the sampler's seed and epoch
    elif seed is not None and isinstance(generator, torch.Generator):
        generator.manual_seed(seed * 1_000_003 + epoch)
    return itertools.islice(iter(loader), skip, None)
