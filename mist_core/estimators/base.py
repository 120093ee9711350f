"""The estimator interface: a per-sample log-ratio whose mean is the MI estimate.

Every estimator computes, from one forward pass over a batch ``x: [N, D_x]``,
``y: [N, D_y]``, two things at once (:class:`Terms`): the training loss, and per-sample
terms ``log_ratio: [N]`` whose mean is the estimate of :math:`I(X; Y)` in nats. Doing both in
one pass means a training step never pays for a second evaluation to log the estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from mist_core.results import pair_name, parse_pair_name

__all__ = ["BatchEstimator", "BatchTerms", "MIEstimator", "Terms", "mi_name", "parse_mi_name"]


def mi_name(x_key: str, y_key: str) -> str:
    """The display name of a pair, as the seed prints it: ``I(x_key;y_key)``."""
    return pair_name(x_key, y_key)


def parse_mi_name(name: str) -> tuple[str, str]:
    """The inverse of :func:`mi_name`: ``"I(x_key;y_key)"`` -> ``(x_key, y_key)``."""
    return parse_pair_name(name)


@dataclass(frozen=True)
class Terms:
    """The result of one pass: ``loss`` (scalar, to minimise) and ``log_ratio`` (``[N]``)."""

    loss: Tensor
    log_ratio: Tensor


@dataclass(frozen=True)
class BatchTerms:
    """One pass over a batch dict: total ``loss`` and per-sample terms ``[N]`` per pair name."""

    loss: Tensor
    log_ratios: dict[str, Tensor]


class MIEstimator(nn.Module):
    """Base class of the estimators of :math:`I(X; Y)` between two tensors.

    Subclasses implement :meth:`terms`. Class flags say what the estimate is:

    - ``lower_bound``: the estimate is a lower bound on the true MI (for any critic or q);
    - ``upper_bound``: it is an upper bound when its variational density is exact.

    ``infomax_gradient`` maps ``"x"`` and ``"y"`` to whether maximising the estimate with
    respect to that argument is meaningful (an encoder upstream may be trained by it).
    """

    lower_bound: ClassVar[bool] = False
    upper_bound: ClassVar[bool] = False
    infomax_gradient: dict[str, bool]

    def __init__(self) -> None:
        super().__init__()
        self.infomax_gradient = {"x": True, "y": True}

    def terms(self, x: Tensor, y: Tensor) -> Terms:
        """Loss and per-sample log-ratios for ``x: [N, D_x]``, ``y: [N, D_y]``."""
        raise NotImplementedError

    def batch_terms(self, batch: Mapping[str, Tensor]) -> BatchTerms:
        """:meth:`terms` on a batch dict with keys ``"x"``, ``"y"`` (the training loop's entry)."""
        missing = [key for key in ("x", "y") if key not in batch]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs batch keys 'x' and 'y'; missing {missing}, "
                f"got {sorted(batch)}. Wrap it in MultiMIEstimator to map other names."
            )
        terms = self.terms(batch["x"], batch["y"])
        return BatchTerms(loss=terms.loss, log_ratios={mi_name("x", "y"): terms.log_ratio})

    def log_ratio(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample terms ``[N]``; their mean is the MI estimate in nats."""
        return self.terms(x, y).log_ratio

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The scalar training loss."""
        return self.terms(x, y).loss

    def mutual_information(self, x: Tensor, y: Tensor) -> Tensor:
        """The MI estimate on this batch, in nats (a 0-d tensor)."""
        return self.log_ratio(x, y).mean()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.mutual_information(x, y)

    def extra_repr(self) -> str:
        kind = (
            "lower bound"
            if self.lower_bound
            else "upper bound"
            if self.upper_bound
            else "estimate"
        )
        return f"kind={kind!r}, infomax_gradient={self.infomax_gradient}"


class BatchEstimator(nn.Module):
    """Base of the wrappers that work on batch dicts of named tensors (Multi, Transformed).

    Subclasses implement :meth:`batch_terms`; the rest follows from it, keyed by pair name
    ``"I(x;y)"``.
    """

    infomax_gradient: dict[str, bool]

    def batch_terms(self, batch: Mapping[str, Tensor]) -> BatchTerms:
        raise NotImplementedError

    def loss(self, **batch: Tensor) -> Tensor:
        """The summed loss of every estimator on the batch."""
        return self.batch_terms(batch).loss

    def log_ratio(self, **batch: Tensor) -> dict[str, Tensor]:
        """``{"I(x;y)": [N] per-sample terms}`` for every pair."""
        return self.batch_terms(batch).log_ratios

    def mutual_information(self, **batch: Tensor) -> dict[str, Tensor]:
        """``{"I(x;y)": estimate in nats}`` for every pair, on this batch."""
        return {name: terms.mean() for name, terms in self.log_ratio(**batch).items()}

    def forward(self, **batch: Tensor) -> dict[str, Tensor]:
        return self.mutual_information(**batch)
