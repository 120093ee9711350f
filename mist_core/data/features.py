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
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mist_core.data.stopping import check_stop
from mist_core.data.store import default_cache_dir
from mist_core.freeze import is_frozen
from mist_core.runs import write_atomic

__all__ = [
    "MAX_TABLES",
    "FeatureCache",
    "WithFeatures",
    "compute_features",
    "default_feature_cache",
    "module_fingerprint",
]

#: Feature tables a :class:`FeatureCache` keeps in memory by default (least recently used
#: dropped first): the dashboard's jobs share one cache across every config they train.
MAX_TABLES = 16

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
    stop_event: threading.Event | None = None,
) -> Tensor:
    """Run ``encoder`` over every item's ``key`` in order: ``[len(dataset), F]`` on the CPU.

    The table is filled batch by batch (no second copy). ``stop_event`` is checked before
    each batch: when set, :class:`~mist_core.data.stopping.PreparationStopped` is raised.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot compute features of an empty dataset")
    was_training = encoder.training
    encoder.eval()
    table: Tensor | None = None
    done = 0
    try:
        # its own generator: the iterator's base seed must not come from torch's global one
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()
        )
        for batch in loader:
            check_stop(stop_event, "computing features")
            features = encoder(batch[key].to(device)).float().cpu()
            if table is None:
                table = torch.empty((n, *features.shape[1:]), dtype=features.dtype)
            table[done : done + len(features)] = features
            done += len(features)
        check_stop(stop_event, "computing features")
    finally:
        encoder.train(was_training)
    if table is None or done != n:
        raise ValueError(f"the dataset gave {done} items, expected {n}")
    return table


class FeatureCache:
    """Feature tables of frozen encoders, in memory and optionally on disk.

    Args:
        directory: where to keep ``.safetensors`` tables between runs (``None``: memory only).
        max_tables: how many tables to keep in memory (``None``: no bound); the least
            recently used one is dropped first (it stays on disk when ``directory`` is set).
            A table is ``N x 512`` float32: 2 KB per image, 4 MB for 2,000 images.

    A table is keyed by the dataset's fingerprint (a string that identifies exactly which
    images, e.g. ``"synthetic(n=2000,seed=0)"``), the encoder's weights
    (:func:`module_fingerprint`, so two random inits never collide) and the encoder's
    input settings, which the caller includes in the dataset or the ``extra`` key.
    """

    def __init__(
        self, directory: str | Path | None = None, max_tables: int | None = MAX_TABLES
    ) -> None:
        if max_tables is not None and (
            isinstance(max_tables, bool) or not isinstance(max_tables, int) or max_tables < 1
        ):
            raise ValueError(f"max_tables must be a positive integer or None, got {max_tables!r}")
        self.directory = Path(directory) if directory is not None else None
        self.max_tables = max_tables
        self._tables: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """How many tables are in memory."""
        return len(self._tables)

    def _remember(self, key: str, table: Tensor) -> None:
        with self._lock:
            self._tables[key] = table
            self._tables.move_to_end(key)
            while self.max_tables is not None and len(self._tables) > self.max_tables:
                self._tables.popitem(last=False)

    def _recall(self, key: str) -> Tensor | None:
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
            return table

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
        stop_event: threading.Event | None = None,
    ) -> Tensor:
        """The table ``[len(dataset), F]`` for a frozen ``encoder``, computed at most once
        (while it stays among the ``max_tables`` most recently used, or on disk).

        ``encoder_fingerprint``: the encoder's :func:`module_fingerprint` when the caller
        already has it (hashing the weights costs ~0.1 s for a ResNet18). ``stop_event``: see
        :func:`compute_features`.
        """
        if not is_frozen(encoder):
            raise ValueError("only frozen encoders can be cached: a trained one changes each step")
        key = self.key(dataset_fingerprint, encoder, extra, encoder_fingerprint)
        table = self._recall(key)
        if table is not None:
            self.hits += 1
            return table
        path = self._path(key)
        if path is not None and path.exists():
            try:
                table = load_file(str(path))["features"]
                if len(table) == len(dataset):  # type: ignore[arg-type]
                    self.hits += 1
                    self._remember(key, table)
                    return table
                logger.warning("ignoring cached features %s: wrong length", path)
            except Exception as error:  # a truncated or foreign file: recompute it
                logger.warning("ignoring unreadable cached features %s: %s", path, error)
        self.misses += 1
        table = compute_features(
            encoder, dataset, batch_size=batch_size, device=device, stop_event=stop_event
        )
        self._remember(key, table)
        if path is not None:
            self._write(path, table)
        return table

    @staticmethod
    def _write(path: Path, table: Tensor) -> None:
        """Write atomically and durably: a reader never sees half a file, and a table that
        was written is still whole after a power cut. A disk that refuses (read-only, full)
        is logged: the table stays in memory and the run goes on."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, save({"features": table.contiguous()}))
        except OSError as error:
            logger.warning("could not keep the features in %s (%s)", path, error)


def default_feature_cache() -> FeatureCache:
    """A cache that also keeps its tables on disk, in ``features/`` of the image cache's
    folder (``$MIST_IMAGE_CACHE`` or ``~/.cache/mist/images``): a second run with the same
    images and frozen encoder reads its features instead of computing them."""
    return FeatureCache(directory=default_cache_dir() / "features")


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
