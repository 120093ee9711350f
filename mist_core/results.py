"""The typed result of one MI estimate between a representation and a target.

A run's summary, a job's final table and the experiment's evaluation all hold
:class:`PairEstimate` values; the JSON form (:meth:`PairEstimate.to_dict`) keeps the keys
``encoder``/``landmark``/``mi``/``std_error`` so that summaries written before ``n``,
``estimator`` and ``warnings`` existed still read. This module imports nothing from
mist_core, so every layer (estimators, training, runs, app) can use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = ["FRAME_COLUMNS", "PairEstimate", "pair_name", "parse_pair_name", "to_frame"]

#: The columns of :func:`to_frame`, in order.
FRAME_COLUMNS = ("encoder", "landmark", "mi", "std_error")


def pair_name(x: str, y: str) -> str:
    """The display name of a pair, as the seed prints it: ``"I(x;y)"``."""
    return f"I({x};{y})"


def parse_pair_name(name: str) -> tuple[str, str]:
    """The inverse of :func:`pair_name`: ``"I(x;y)"`` -> ``(x, y)``.

    Raises:
        ValueError: ``name`` is not of the form ``I(x;y)`` (e.g. ``"loss"``).
    """
    if not (name.startswith("I(") and name.endswith(")") and ";" in name):
        raise ValueError(f"not an MI name of the form I(x;y): {name!r}")
    x, y = name[2:-1].split(";", 1)
    return x, y


@dataclass(frozen=True)
class PairEstimate:
    """An estimate of :math:`I(representation; target)` in nats, with its standard error.

    ``std_error`` is the standard error of the mean of the per-sample terms; ``n`` the number
    of samples averaged and ``estimator`` the estimator's name (e.g. ``"doe"``), both ``None``
    when unknown (results saved before these fields existed). ``warnings`` are plain-English
    sentences saying why the number may not be trusted and what to do
    (:mod:`mist_core.reliability`); empty when nothing was found, or for older results.
    """

    representation: str
    target: str
    mi: float
    std_error: float
    n: int | None = None
    estimator: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``"I(representation;target)"``."""
        return pair_name(self.representation, self.target)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys ``encoder landmark mi std_error n estimator warnings``."""
        return {
            "encoder": self.representation,
            "landmark": self.target,
            "mi": self.mi,
            "std_error": self.std_error,
            "n": self.n,
            "estimator": self.estimator,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> PairEstimate:
        """Read :meth:`to_dict`'s form; rows without ``n``/``estimator``/``warnings`` (older
        runs) read too, and a lone warning (not in a list) reads as one warning.

        Raises:
            KeyError: ``encoder``, ``landmark``, ``mi`` or ``std_error`` is missing.
        """
        n = row.get("n")
        estimator = row.get("estimator")
        warnings = row.get("warnings") or ()
        if not isinstance(warnings, (list, tuple)):
            warnings = (warnings,)  # a hand-edited file: one warning, not its characters
        return cls(
            representation=str(row["encoder"]),
            target=str(row["landmark"]),
            mi=float(row["mi"]),
            std_error=float(row["std_error"]),
            n=None if n is None else int(n),
            estimator=None if estimator is None else str(estimator),
            warnings=tuple(str(w) for w in warnings),
        )


def to_frame(estimates: Sequence[PairEstimate]) -> pd.DataFrame:
    """One row per estimate, columns ``encoder, landmark, mi, std_error`` (in that order;
    the estimates' ``warnings`` are read from the :class:`PairEstimate` s themselves)."""
    return pd.DataFrame(
        [(e.representation, e.target, e.mi, e.std_error) for e in estimates],
        columns=list(FRAME_COLUMNS),
    )
