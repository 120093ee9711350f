"""What ``python -m mist_core`` prints: MI tables, seed groups' means, warnings, the
calibration of the posterior regions, one line per run for ``list``, and a run's notes.
Plain text from typed results; nothing here reads files or computes an estimate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import pandas as pd

from mist_core.calibration import CalibrationReport
from mist_core.comparison import GroupEstimate, SeedGroup
from mist_core.results import PairEstimate
from mist_core.runs import RunInfo, RunNotes

__all__ = [
    "NOTE_CHARS",
    "format_calibration",
    "format_group_table",
    "format_notes",
    "format_table",
    "format_warnings",
    "run_line",
    "when",
]


def format_table(table: pd.DataFrame) -> str:
    """The MI table (:func:`mist_core.results.to_frame`'s columns) as text: landmarks as rows,
    encoders as columns, 'mi ± se' nats."""
    if table.empty:
        return "(no MI table)"
    cells = table.assign(
        cell=[f"{m:6.3f} ± {s:.3f}" for m, s in zip(table.mi, table.std_error, strict=True)]
    )
    pivot = cells.pivot(index="landmark", columns="encoder", values="cell")
    pivot = pivot.reindex(
        index=list(dict.fromkeys(table.landmark)), columns=list(dict.fromkeys(table.encoder))
    )
    return "MI in nats (± standard error) on the test images\n" + pivot.to_string()


def format_group_table(group: SeedGroup, estimates: Sequence[GroupEstimate]) -> str:
    """The mean ± standard error across a seed group's runs as text, laid out as
    :func:`format_table` (landmarks as rows, encoders as columns) plus a column ``k``: the
    runs behind each row's numbers (``min-max`` when they differ, some estimates NaN)."""
    seeds = ", ".join("?" if seed is None else str(seed) for seed in group.seeds)
    head = f"seeds {seeds} of {group.runs[0].name} (mean ± s.e. across {len(group.runs)} runs)"
    if not estimates:
        return f"{head}\n(no MI table)"
    table = pd.DataFrame(
        {
            "encoder": [e.representation for e in estimates],
            "landmark": [e.target for e in estimates],
            "cell": [f"{e.mi:6.3f} ± {e.std_error:.3f}" for e in estimates],
            "k": [e.k for e in estimates],
        }
    )
    landmarks = list(dict.fromkeys(table.landmark))
    pivot = table.pivot(index="landmark", columns="encoder", values="cell")
    pivot = pivot.reindex(index=landmarks, columns=list(dict.fromkeys(table.encoder)))
    counts = table.groupby("landmark", sort=False)["k"].agg(["min", "max"]).loc[landmarks]
    pivot["k"] = [
        str(low) if low == high else f"{low}-{high}"
        for low, high in zip(counts["min"], counts["max"], strict=True)
    ]
    pivot.columns.name = "encoder"
    return f"{head}\nMI in nats (mean ± standard error across runs)\n{pivot.to_string()}"


def format_warnings(estimates: Sequence[PairEstimate]) -> str:
    """A ``Warnings:`` block, one line ``I(encoder;landmark): text`` per warning of each
    estimate; ``""`` when none has any."""
    lines = [f"{e.name}: {text}" for e in estimates for text in e.warnings]
    return "\n".join(["Warnings:", *lines]) if lines else ""


def format_calibration(report: CalibrationReport) -> str:
    """How often the 50% and 90% regions held the truth, per landmark and density, as text."""
    lines = [
        f"How often the posterior regions held the true position ({report.split} faces; "
        "'recalibrated': drawn at the masses fitted on the validation faces)"
    ]
    frame = report.to_frame()
    lines.append(frame.to_string(index=False))
    return "\n".join(lines)


def when(created: float | None) -> str:
    if created is None:
        return "?"
    try:
        return datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return "?"


#: How much of a run's note ``list`` shows, in characters.
NOTE_CHARS = 60


def run_line(info: RunInfo) -> str:
    """One line of ``list``: what could be read of the run, then its problem if any."""
    status = info.status.value if info.status else "unreadable"
    config = info.config
    what = f"{config.dataset}, {'+'.join(config.encoders)}" if config else ""
    best = ""
    rows = (info.summary or {}).get("mi") or []
    finite = [e for e in map(PairEstimate.from_dict, rows) if not math.isnan(e.mi)]
    if finite:
        top = max(finite, key=lambda e: e.mi)
        best = f"  best {top.name} = {top.mi:.2f} nats"
    step = f"step {info.last_step}" if info.last_step is not None else ""
    owner = ""
    if info.owner:
        owner = f"  (process {info.owner.get('pid')} on {info.owner.get('host')})"
    tags = f"  [{', '.join(info.tags)}]" if info.tags else ""
    note = ""
    if info.note:
        text = " ".join(info.note.split())  # line breaks as spaces
        note = f'  "{text if len(text) <= NOTE_CHARS else text[: NOTE_CHARS - 3] + "..."}"'
    problem = f"  problem: {info.problem}" if info.problem else ""
    line = (
        f"{info.name:32s} {when(info.created)}  {status:11s} {step:10s} "
        f"{what}{best}{owner}{tags}{note}"
    )
    return (line.rstrip() + problem).replace("\n", " ")


def format_notes(name: str, notes: RunNotes) -> str:
    """A run's note and tags as ``note`` prints them."""
    written = f" (notes of {when(notes.updated)})" if notes.updated is not None else ""
    tags = ", ".join(notes.tags) if notes.tags else "(none)"
    return f"run {name}{written}\ntags: {tags}\nnote: {notes.note or '(none)'}"
