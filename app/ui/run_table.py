"""The Results page's table of runs: one readable row per run, and the search over them.

The numbers are the runs' own (their summaries); this module names, rounds and filters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import pandas as pd

from mist_core.results import PairEstimate
from mist_core.runs import RunInfo

from . import labels

__all__ = ["COLUMNS", "frame", "matches", "mean_mi", "row"]

#: The table's columns, in order.
COLUMNS = (
    "Run",
    "Date",
    "Dataset",
    "Networks",
    "Estimator",
    "Seed",
    "Status",
    "Mean MI (nats)",
    "Tags",
    "Note",
)


def mean_mi(info: RunInfo) -> float | None:
    """The plain average of a run's finite MI estimates over its (network, landmark) pairs,
    as its summary holds them; ``None`` when it has none (the table's "Mean MI" column)."""
    rows = (info.summary or {}).get("mi") or []
    values = [e.mi for e in map(PairEstimate.from_dict, rows) if math.isfinite(e.mi)]
    return sum(values) / len(values) if values else None


def _date(created: float | None) -> str:
    if created is None:
        return ""
    try:
        return datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return ""


def row(info: RunInfo) -> dict[str, object]:
    """One run's row of the table (:data:`COLUMNS`)."""
    config = info.config
    mean = mean_mi(info)
    return {
        "Run": info.name,
        "Date": _date(info.created),
        "Dataset": config.dataset if config is not None else "",
        "Networks": ", ".join(labels.encoder_short(e) for e in config.encoders) if config else "",
        "Estimator": config.estimator if config is not None else "",
        "Seed": config.seed if config is not None else None,
        "Status": info.status.value if info.status else "?",
        "Mean MI (nats)": None if mean is None else round(mean, 3),
        "Tags": ", ".join(info.tags),
        "Note": info.note.replace("\n", " "),
    }


def frame(infos: Sequence[RunInfo]) -> pd.DataFrame:
    """The table of ``infos`` (in their order), columns :data:`COLUMNS`."""
    return pd.DataFrame([row(info) for info in infos], columns=list(COLUMNS))


def matches(info: RunInfo, query: str) -> bool:
    """Whether every word of ``query`` (case ignored) appears in the run's name, date,
    dataset, networks, estimator, status, tags or note; an empty query matches every run."""
    words = query.lower().split()
    if not words:
        return True
    text = " ".join(str(v) for v in row(info).values()).lower()
    return all(word in text for word in words)
