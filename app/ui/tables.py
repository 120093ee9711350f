"""The MI tables the pages show: typed per-pair estimates in, readable DataFrames out.

A run's ``summary.json`` keeps its MI rows as JSON; they become
:class:`~mist_core.results.PairEstimate` here, once, and every table or chart is drawn from
those. The numbers are mist_core's; this module only names and rounds them for the eye.
So are the warnings on them (:mod:`mist_core.reliability`): a number that has some is marked
:data:`FLAG` in the table, and :func:`flag_notes` gives their sentences to show under it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from mist_core.results import PairEstimate, to_frame
from mist_core.runs import RunInfo

from . import labels

__all__ = ["FLAG", "csv_bytes", "flag_notes", "readable", "run_estimates"]

#: Decimals shown in the tables (a standard error is rarely below 0.01 nats).
DECIMALS = 3
#: The mark beside a number that carries warnings (also the name of its column).
FLAG = "⚠"


def run_estimates(info: RunInfo) -> list[PairEstimate]:
    """A finished run's MI, one estimate per (encoder, landmark), in the summary's order
    (the rows' shape was checked when the store read summary.json)."""
    assert info.summary is not None
    return [PairEstimate.from_dict(row) for row in info.summary["mi"]]


def readable(estimates: Sequence[PairEstimate]) -> pd.DataFrame:
    """The table under a run's bar chart: Network, Landmark, MI (nats), ± std. error; when
    some number carries warnings, a :data:`FLAG` column beside the MI marks those."""
    frame = to_frame(estimates)
    table = pd.DataFrame(
        {
            "Network": frame["encoder"].map(labels.encoder),
            "Landmark": frame["landmark"].map(labels.landmark),
            "MI (nats)": frame["mi"].round(DECIMALS),
            "± std. error": frame["std_error"].round(DECIMALS),
        }
    )
    if any(e.warnings for e in estimates):
        table.insert(3, FLAG, [FLAG if e.warnings else "" for e in estimates])
    return table


def flag_notes(estimates: Sequence[PairEstimate]) -> list[str]:
    """One Markdown line per warning, ``**Network · Landmark**: why``, in the table's order;
    empty when no number is flagged."""
    return [
        f"**{labels.pair(e.representation, e.target)}**: {text}"
        for e in estimates
        for text in e.warnings
    ]


def csv_bytes(estimates: Sequence[PairEstimate]) -> bytes:
    """The run's MI for a download: columns encoder, landmark, mi, std_error (nats) and
    warnings (a row's sentences joined by " | ", empty when none)."""
    frame = to_frame(estimates).assign(warnings=[" | ".join(e.warnings) for e in estimates])
    return frame.to_csv(index=False).encode()
