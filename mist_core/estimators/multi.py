"""Many estimators trained together, each on its own pair of named variables."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from torch import Tensor, nn

from mist_core.estimators.base import BatchEstimator, BatchTerms, MIEstimator, mi_name
from mist_core.estimators.stacked import StackedHeads
from mist_core.estimators.stacked_layout import StackedParameters, stackable, weight_owners

__all__ = ["MultiMIEstimator"]


class MultiMIEstimator(BatchEstimator):
    """One estimator per ``(x_key, y_key)`` pair, applied to a batch dict of named tensors.

    Args:
        estimators: ``{(x_key, y_key): estimator}``; each estimator receives
            ``x=batch[x_key]``, ``y=batch[y_key]``.

    Attributes:
        estimators: an ``nn.ModuleDict`` keyed ``"x_key;y_key"``.
        infomax_gradient: ``{variable: bool}`` in first-seen order; a variable gets ``True``
            only if every estimator it takes part in passes infomax gradient on that side.

    The loss is the sum of the estimators' losses. Modules shared between estimators (for
    example one marginal q(y) per target) are trained by each of them.

    DoE heads of one architecture (the seed's) run together
    (:mod:`mist_core.estimators.stacked`): their weights become a few stacked parameters
    (``stacked_parameters``), which are what ``parameters()`` yields, while the heads keep
    views of them under their usual names (state dicts are unchanged). Train such heads
    through this module.
    """

    def __init__(self, estimators: Mapping[tuple[str, str], MIEstimator]) -> None:
        super().__init__()
        if not estimators:
            raise ValueError(
                "MultiMIEstimator needs at least one (x_key, y_key) -> estimator entry"
            )
        self.pairs: list[tuple[str, str]] = []
        modules: dict[str, MIEstimator] = {}
        for key, estimator in estimators.items():
            if not (
                isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)
            ):
                raise ValueError(f"keys must be (x_key, y_key) tuples of names, got {key!r}")
            if any(";" in k or "." in k for k in key):
                raise ValueError(f"variable names may not contain ';' or '.', got {key!r}")
            if not isinstance(estimator, MIEstimator):
                raise TypeError(
                    f"the estimator for {key} must be an MIEstimator, got {type(estimator)}"
                )
            self.pairs.append(key)
            modules[f"{key[0]};{key[1]}"] = estimator
        self.estimators = nn.ModuleDict(modules)

        flags: dict[str, bool] = {}
        for (x_key, y_key), estimator in zip(self.pairs, modules.values(), strict=True):
            for name, side in ((x_key, "x"), (y_key, "y")):
                flags[name] = flags.get(name, True) and estimator.infomax_gradient[side]
        self.infomax_gradient = flags
        #: Evaluate DoE heads of one architecture together (same numbers, fewer and larger
        #: matrix products; see :mod:`mist_core.estimators.stacked`). False: one at a time.
        self.stack_heads = stackable(self.pairs, list(self.estimators.values()))
        #: The stacked heads' weights (:class:`StackedParameters`; None when the heads do
        #: not stack). When set, the heads' tensors are views of its parameters, and those
        #: parameters are what optimisers see.
        self.stacked_parameters: StackedParameters | None = None
        if self.stack_heads:
            self.stacked_parameters = StackedParameters(
                weight_owners(self.pairs, list(self.estimators.values()))
            )
        self._stacked_heads: StackedHeads | None = None  # built on first use

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        # a move or cast converts the stacked parameters and the heads' views apart
        super()._apply(fn, recurse)
        if self.stacked_parameters is not None:
            self.stacked_parameters.relink()
        return self

    def batch_terms(self, batch: Mapping[str, Tensor]) -> BatchTerms:
        missing = sorted({k for pair in self.pairs for k in pair} - set(batch))
        if missing:
            raise KeyError(f"the batch has no variable(s) {missing}; it has {sorted(batch)}")
        weights = self.stacked_parameters
        if weights is not None:
            heads = list(self.estimators.values())
            if self._stacked_heads is None or not self._stacked_heads.valid(heads):
                # a deep copy, unpickling or load_state_dict(assign=True) left the heads'
                # tensors apart from the stacked parameters: link them again first
                weights.relink()
                self._stacked_heads = StackedHeads(self.pairs, heads, weights)
            if self.stack_heads and self._stacked_heads.applies(batch):
                return self._stacked_heads.batch_terms(batch)
        loss: Tensor | int = 0
        log_ratios: dict[str, Tensor] = {}
        owned = weights.differentiable() if weights is not None else contextlib.nullcontext()
        with owned:
            for (x_key, y_key), estimator in zip(
                self.pairs, self.estimators.values(), strict=True
            ):
                terms = estimator.terms(batch[x_key], batch[y_key])
                loss = loss + terms.loss
                log_ratios[mi_name(x_key, y_key)] = terms.log_ratio
        assert isinstance(loss, Tensor)
        return BatchTerms(loss=loss, log_ratios=log_ratios)
