"""``metrics.csv``: its columns, rows to append, and reading it back (whole, or only its end)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

import pandas as pd

logger = logging.getLogger("mist_core.runs")  # one logger for the whole package

METRIC_COLUMNS = ("step", "epoch", "split", "name", "value")
_HEADER = ",".join(METRIC_COLUMNS) + "\n"
_TAIL_BYTES = 8192

#: Largest ``metrics.csv`` read whole (``list`` reads only its last 8 KB, whatever its size).
MAX_METRICS_BYTES = 512 * 2**20


def _metric_rows(rows: pd.DataFrame | Iterable[tuple]) -> list[tuple[int, int, str, str, float]]:
    if isinstance(rows, pd.DataFrame):
        missing = [c for c in METRIC_COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(
                f"metrics DataFrame lacks column(s) {missing}; needs {list(METRIC_COLUMNS)}"
            )
        rows = rows[list(METRIC_COLUMNS)].itertuples(index=False, name=None)
    out = []
    for row in rows:
        row = tuple(row)
        if len(row) != 5:
            raise ValueError(f"a metric row is (step, epoch, split, name, value), got {row!r}")
        step, epoch, split, name, value = row
        out.append((int(step), int(epoch), str(split), str(name), float(value)))
    return out


def _complete_text(data: bytes) -> str:
    """The text up to the last newline: a line torn by a kill is dropped."""
    end = data.rfind(b"\n")
    if end < len(data) - 1:
        # a writer may be mid-append right now: not worth a warning
        logger.debug("metrics.csv ends in an incomplete line (%d bytes)", len(data) - end - 1)
    return data[: end + 1].decode("utf-8", errors="replace")


def _parse_metrics(text: str) -> pd.DataFrame:
    empty = pd.DataFrame(
        {
            "step": pd.Series(dtype="int64"),
            "epoch": pd.Series(dtype="int64"),
            "split": pd.Series(dtype="str"),
            "name": pd.Series(dtype="str"),
            "value": pd.Series(dtype="float64"),
        }
    )
    if not text.strip():
        return empty
    frame = pd.read_csv(
        io.StringIO(text),
        header=None,
        names=list(METRIC_COLUMNS),
        dtype=str,
        keep_default_na=False,
        on_bad_lines="skip",
    )
    step = pd.to_numeric(frame["step"], errors="coerce")
    epoch = pd.to_numeric(frame["epoch"], errors="coerce")
    # drops the header and any garbled row (non-integral or absurd steps included)
    good = step.notna() & epoch.notna()
    good &= (step % 1 == 0) & (epoch % 1 == 0) & (step.abs() < 2**62) & (epoch.abs() < 2**62)
    bad = int((~good).sum()) - int((frame["step"] == "step").sum())
    if bad > 0:
        logger.warning("metrics.csv: %d unparseable row(s) ignored", bad)
    if not good.any():
        return empty
    return pd.DataFrame(
        {
            "step": step[good].astype("int64").to_numpy(),
            "epoch": epoch[good].astype("int64").to_numpy(),
            "split": frame.loc[good, "split"].astype(str).to_numpy(),
            "name": frame.loc[good, "name"].astype(str).to_numpy(),
            "value": pd.to_numeric(frame.loc[good, "value"], errors="coerce")
            .astype("float64")
            .to_numpy(),
        }
    )


def _last_step_of(tail: bytes) -> int | None:
    """The step of the last complete row in the end of a metrics file."""
    lines = tail[: tail.rfind(b"\n") + 1].splitlines()
    for line in reversed(lines):
        first = line.split(b",", 1)[0].strip()
        if first.isdigit() and len(first) < 19:
            return int(first)
    return None
