"""The typed result of one MI estimate between a representation and a target.

A run's summary, a job's final table and the experiment's evaluation all hold
:class:`PairEstimate` values; the JSON form (:meth:`PairEstimate.to_dict`) keeps the keys
``encoder``/``landmark``/``mi``/``std_error`` so that summaries written before ``n`` and
``estimator`` existed still read. This module imports nothing from mist_core, so every layer
(estimators, training, runs, app) can use it.
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
    when unknown (results saved before these fields existed).
    """

    representation: str
    target: str
    mi: float
    std_error: float
    n: int | None = None
    estimator: str | None = None

    @property
    def name(self) -> str:
        """``"I(representation;target)"``."""
        return pair_name(self.representation, self.target)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys ``encoder landmark mi std_error n estimator``."""
        return {
            "encoder": self.representation,
            "landmark": self.target,
            "mi": self.mi,
            "std_error": self.std_error,
            "n": self.n,
            "estimator": self.estimator,
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> PairEstimate:
        """Read :meth:`to_dict`'s form; rows without ``n``/``estimator`` (older runs) read too.

        Raises:
            KeyError: ``encoder``, ``landmark``, ``mi`` or ``std_error`` is missing.
        """
        n = row.get("n")
        estimator = row.get("estimator")
        return cls(
            representation=str(row["encoder"]),
            target=str(row["landmark"]),
            mi=float(row["mi"]),
            std_error=float(row["std_error"]),
            n=None if n is None else int(n),
            estimator=None if estimator is None else str(estimator),
        )


def to_frame(estimates: Sequence[PairEstimate]) -> pd.DataFrame:
    """One row per estimate, columns ``encoder, landmark, mi, std_error`` (in that order)."""
    return pd.DataFrame(
        [(e.representation, e.target, e.mi, e.std_error) for e in estimates],
        columns=list(FRAME_COLUMNS),
    )
