"""An estimator applied after transforming variables, e.g. images -> encoder features."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mist_core.estimators.base import BatchEstimator, BatchTerms, MIEstimator
from mist_core.estimators.multi import MultiMIEstimator
from mist_core.freeze import is_frozen

__all__ = ["TransformedMIEstimator"]


class TransformedMIEstimator(BatchEstimator):
    """Applies named transforms to a batch dict, then a base estimator to the result.

    Args:
        base_estimator: a :class:`MultiMIEstimator` (sees the whole transformed batch) or a
            single :class:`MIEstimator` (sees ``batch["x"]``, ``batch["y"]``).
        transforms_rename: ``{(source, new_name): module}``; adds
            ``batch[new_name] = module(batch[source])``.
        transforms: ``{name: module}``; replaces ``batch[name] = module(batch[name])``.

    Modules frozen with :func:`~mist_core.freeze` run under ``torch.no_grad``: their outputs
    are the same, and no graph is kept for them.
    """

    def __init__(
        self,
        base_estimator: MultiMIEstimator | MIEstimator,
        transforms_rename: Mapping[tuple[str, str], nn.Module] | None = None,
        transforms: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base_estimator, (MultiMIEstimator, MIEstimator)):
            raise TypeError(
                "base_estimator must be an MIEstimator or MultiMIEstimator, "
                f"got {type(base_estimator).__name__}"
            )
        self.base_estimator = base_estimator
        renames: dict[str, str] = {}
        modules: dict[str, nn.Module] = {}
        for name, module in (transforms or {}).items():
            renames[name] = name
            modules[name] = module
        for key, module in (transforms_rename or {}).items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"transforms_rename keys must be (source, new_name), got {key!r}")
            source, target = key
            if target in modules:
                raise ValueError(f"two transforms write the variable {target!r}")
            renames[target] = source
            modules[target] = module
        if not modules:
            raise ValueError("give at least one transform (transforms or transforms_rename)")
        for target, module in modules.items():
            if not isinstance(module, nn.Module):
                raise TypeError(f"the transform for {target!r} must be an nn.Module")
        #: ``{new_name: source}``, in the order the transforms are applied.
        self.sources = renames
        self.transforms = nn.ModuleDict(modules)

    @property
    def infomax_gradient(self) -> dict[str, bool]:
        return self.base_estimator.infomax_gradient

    def transform(self, **batch: Tensor) -> dict[str, Tensor]:
        """The batch dict with every transform's output added (or replaced)."""
        out = dict(batch)
        for target, module in self.transforms.items():
            source = self.sources[target]
            if source not in batch:
                raise KeyError(
                    f"transform {source!r} -> {target!r}: the batch has no {source!r}; "
                    f"it has {sorted(batch)}"
                )
            if is_frozen(module):
                with torch.no_grad():
                    out[target] = module(batch[source])
            else:
                out[target] = module(batch[source])
        return out

    def batch_terms(self, batch: Mapping[str, Tensor]) -> BatchTerms:
        return self.base_estimator.batch_terms(self.transform(**batch))
