"""What the Results page compares: the selected runs, alone or grouped by seed, with their
MI tables and curves ready to draw. The grouping, means and standard errors are
:mod:`mist_core.comparison`'s; this module puts them in the shape the charts take.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mist_core.comparison import GroupEstimate, group_by_seed, mean_curve, mean_estimates
from mist_core.results import pair_name
from mist_core.runs import RunInfo

from . import labels, tables
from .compare_charts import Line

__all__ = ["Shown", "compared_csv", "curve_lines", "landmarks_of", "readable", "shown"]

#: A run's training curves by pair name: ``(steps, values)``, both ``[points]``.
Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Shown:
    """One entry of the comparison: a run, or the runs that differ only by seed (averaged).
    ``estimates`` are the run's own or the group's means (``k`` runs each)."""

    label: str
    runs: tuple[RunInfo, ...]
    estimates: tuple[GroupEstimate, ...]

    @property
    def seeds(self) -> list[int]:
        return [info.config.seed for info in self.runs if info.config is not None]

    @property
    def encoders(self) -> list[str]:
        return list(dict.fromkeys(e.representation for e in self.estimates))


def _label(runs: Sequence[RunInfo]) -> str:
    if len(runs) == 1:
        return runs[0].name
    return f"{runs[0].name} (mean of {len(runs)} seeds)"


def shown(selected: Sequence[RunInfo], by_seed: bool) -> list[Shown]:
    """The entries of the comparison, in the order of ``selected``: with ``by_seed``, runs
    whose settings differ only by seed form one entry (their mean and standard error
    across seeds); otherwise one entry per run."""
    groups = [g.runs for g in group_by_seed(selected)] if by_seed else [(i,) for i in selected]
    return [
        Shown(
            _label(runs),
            tuple(runs),
            tuple(mean_estimates([tables.run_estimates(info) for info in runs])),
        )
        for runs in groups
    ]


def landmarks_of(entries: Sequence[Shown]) -> list[str]:
    """The landmarks measured by any entry, in the order they first appear."""
    return list(dict.fromkeys(e.target for entry in entries for e in entry.estimates))


def curve_lines(
    entries: Sequence[Shown], landmark: str, curves_of: Callable[[str], Curves]
) -> list[Line]:
    """One line per entry and network for ``landmark``: a run's per-batch training
    estimates, or a seed group's mean and standard error at the steps its runs share; the
    held-out estimate marks the end. ``curves_of(run_name)`` reads a run's curves."""
    lines = []
    for entry in entries:
        final = {e.representation: e for e in entry.estimates if e.target == landmark}
        for encoder in entry.encoders:
            found = [curves_of(info.name).get(pair_name(encoder, landmark)) for info in entry.runs]
            found = [c for c in found if c is not None and len(c[0])]
            if not found:
                continue
            end = final.get(encoder)
            mark = None if end is None else (end.mi, end.std_error)
            if len(found) == 1:
                steps, values = found[0]
                lines.append(Line(entry.label, encoder, steps, values, final=mark))
                continue
            pairs = [list(zip(s.tolist(), v.tolist(), strict=True)) for s, v in found]
            steps, mean, error = mean_curve(pairs)
            lines.append(Line(entry.label, encoder, steps, mean, spread=error, final=mark))
    return lines


def compared_csv(entries: Sequence[Shown]) -> bytes:
    """The compared runs' MI for a download: one row per entry, network and landmark
    (nats; ``runs averaged`` is 1 for a single run)."""
    rows = [
        {
            "entry": entry.label,
            "runs": " ".join(info.name for info in entry.runs),
            "seeds": " ".join(str(s) for s in entry.seeds),
            "encoder": e.representation,
            "landmark": e.target,
            "mi": e.mi,
            "std_error": e.std_error,
            "runs_averaged": e.k,
        }
        for entry in entries
        for e in entry.estimates
    ]
    return pd.DataFrame(rows).to_csv(index=False).encode()


def readable(entries: Sequence[Shown]) -> pd.DataFrame:
    """The compared MI as a table for the eye: one row per network and landmark, one
    column per entry (``mean ± s.e.``)."""
    table: dict[tuple[str, str], dict[str, str]] = {}
    for entry in entries:
        for e in entry.estimates:
            cell = f"{e.mi:.3f} ± {e.std_error:.3f}"
            table.setdefault((e.representation, e.target), {})[entry.label] = cell
    return pd.DataFrame(
        [
            {"Network": labels.encoder(enc), "Landmark": labels.landmark(lm), **cells}
            for (enc, lm), cells in table.items()
        ]
    )
