"""Frozen-feature cache: a frozen encoder's features are computed once per image and reused.

A frozen encoder (see :func:`mist_core.freeze`) gives the same output for the same image in
every epoch, so training and evaluation can read its features from a table instead of
running the network. :class:`FeatureCache` keeps the tables in memory and, optionally, on
disk as safetensors files keyed by the dataset, the encoder's weights and the image size.
:class:`WithFeatures` adds the cached features to a dataset's items under the encoder's name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mist_core.freeze import is_frozen

__all__ = ["FeatureCache", "WithFeatures", "compute_features", "module_fingerprint"]

logger = logging.getLogger(__name__)


def module_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes, dtypes, values)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:16]


@torch.inference_mode()
def compute_features(
    encoder: nn.Module,
    dataset: Dataset,
    *,
    key: str = "image",
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Run ``encoder`` over every item's ``key`` in order: ``[len(dataset), F]`` on the CPU."""
    was_training = encoder.training
    encoder.eval()
    try:
        # its own generator: the iterator's base seed must not come from torch's global one
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()
        )
        chunks = [encoder(batch[key].to(device)).float().cpu() for batch in loader]
    finally:
        encoder.train(was_training)
    if not chunks:
        raise ValueError("cannot compute features of an empty dataset")
    return torch.cat(chunks)


class FeatureCache:
    """Feature tables of frozen encoders, in memory and optionally on disk.

    Args:
        directory: where to keep ``.safetensors`` tables between runs (``None``: memory only).

    A table is keyed by the dataset's fingerprint (a string that identifies exactly which
    images, e.g. ``"synthetic(n=2000,seed=0)"``), the encoder's weights
    (:func:`module_fingerprint`, so two random inits never collide) and the encoder's
    input settings, which the caller includes in the dataset or the ``extra`` key.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._tables: dict[str, Tensor] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        dataset_fingerprint: str,
        encoder: nn.Module,
        extra: str = "",
        encoder_fingerprint: str | None = None,
    ) -> str:
        weights = encoder_fingerprint or module_fingerprint(encoder)
        raw = f"{dataset_fingerprint}|{weights}|{extra}"
        return hashlib.sha1(raw.encode()).hexdigest()[:24]

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"features-{key}.safetensors"

    def features(
        self,
        encoder: nn.Module,
        dataset: Dataset,
        dataset_fingerprint: str,
        *,
        extra: str = "",
        encoder_fingerprint: str | None = None,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """The table ``[len(dataset), F]`` for a frozen ``encoder``, computed at most once.

        ``encoder_fingerprint``: the encoder's :func:`module_fingerprint` when the caller
        already has it (hashing the weights costs ~0.1 s for a ResNet18).
        """
        if not is_frozen(encoder):
            raise ValueError("only frozen encoders can be cached: a trained one changes each step")
        key = self.key(dataset_fingerprint, encoder, extra, encoder_fingerprint)
        if key in self._tables:
            self.hits += 1
            return self._tables[key]
        path = self._path(key)
        if path is not None and path.exists():
            try:
                table = load_file(str(path))["features"]
                if len(table) == len(dataset):  # type: ignore[arg-type]
                    self.hits += 1
                    self._tables[key] = table
                    return table
                logger.warning("ignoring cached features %s: wrong length", path)
            except Exception as error:  # a truncated or foreign file: recompute it
                logger.warning("ignoring unreadable cached features %s: %s", path, error)
        self.misses += 1
        table = compute_features(encoder, dataset, batch_size=batch_size, device=device)
        self._tables[key] = table
        if path is not None:
            self._write(path, table)
        return table

    @staticmethod
    def _write(path: Path, table: Tensor) -> None:
        """Write atomically: a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": table.contiguous()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class WithFeatures(Dataset):
    """A dataset whose items also carry precomputed features: ``item[name] = table[i]``.

    Args:
        dataset: the base dataset (items are dicts).
        tables: ``{name: [len(dataset), F]}``.
    """

    def __init__(self, dataset: Dataset, tables: Mapping[str, Tensor]) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        for name, table in tables.items():
            if len(table) != n:
                raise ValueError(f"feature table {name!r} has {len(table)} rows, dataset has {n}")
        self.dataset = dataset
        self.tables = dict(tables)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.dataset[index])
        for name, table in self.tables.items():
            item[name] = table[index]
        return item
