"""The calibration of a run's posterior regions, in words: read from its summary, said in
sentences a person who does not program can follow.

The figures are ``mist_core.calibration``'s (a :class:`~mist_core.calibration.
CalibrationReport` in ``summary.json["calibration"]``); this module only reads them back,
picks the ones a sentence names, and formats them ("8.7 times out of 10").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mist_core.calibration import CalibrationReport, Coverage, Recalibration
from mist_core.posterior import PosteriorMap
from mist_core.runs import RunInfo

from . import labels

__all__ = [
    "REGION_NAMES",
    "RunCalibration",
    "coverage_line",
    "curve",
    "densities",
    "map_notes",
    "recalibrated_faces",
    "run_calibration",
    "sentences",
    "truth_line",
]

#: How a page names the region of each level: the colour of its contour line on the
#: Posteriors page (``charts.REGION_COLOURS``).
REGION_NAMES: Mapping[float, str] = {0.5: "cyan 50%", 0.9: "yellow 90%"}


@dataclass(frozen=True)
class RunCalibration:
    """A run's calibration as a page gets it: the ``report``, or ``None`` and a ``note``
    saying why there is none (never measured, or unreadable)."""

    report: CalibrationReport | None
    note: str | None = None


def run_calibration(info: RunInfo) -> RunCalibration:
    """The run's :class:`CalibrationReport`, or a note: a run from before calibration was
    measured has none; a damaged entry is described, never raised."""
    summary = info.summary or {}
    if "calibration" not in summary:
        return RunCalibration(
            None,
            "No calibration for this run yet: "
            f"`python -m mist_core evaluate {info.name} --save` measures it "
            "(runs trained from now on measure it when they finish).",
        )
    try:
        report = CalibrationReport.from_dict(summary["calibration"])
    except ValueError as error:
        return RunCalibration(
            None,
            "This run's calibration could not be read (its summary.json is damaged or was "
            f"edited by hand): {error}. "
            f"`python -m mist_core evaluate {info.name} --save` measures it again.",
        )
    if not report.rows:
        return RunCalibration(None, "This run's calibration holds no densities.")
    return RunCalibration(report)


def densities(report: CalibrationReport) -> list[str | None]:
    """The report's densities in its order: ``None`` (the marginal) first, then encoders."""
    found = list(dict.fromkeys(r.encoder for r in report.rows))
    return sorted(found, key=lambda e: e is not None)


def curve(
    report: CalibrationReport, encoder: str | None, landmark: str | None, recalibrated: bool
) -> list[Coverage] | None:
    """One density's coverage at every level: pooled over the landmarks (``landmark=None``)
    or for one; ``None`` when that figure was not measured (no recalibration)."""
    if landmark is None:
        return report.pooled(encoder, recalibrated=recalibrated)
    row = report.row(encoder, landmark)
    if row is None:
        return None
    found = row.recalibrated if recalibrated else row.coverage
    return None if found is None else list(found)


def _at(rows: Sequence[Coverage] | None, level: float) -> Coverage | None:
    for c in rows or ():
        if abs(c.level - level) < 1e-9:
            return c
    return None


def _times(fraction: float) -> str:
    """``0.873`` -> ``"8.7"`` (times out of 10)."""
    return f"{fraction * 10:.1f}"


def _density_name(encoder: str | None) -> str:
    return "Average face (no picture)" if encoder is None else labels.encoder(encoder)


def _faces_phrase(report: CalibrationReport, landmark: str | None) -> str:
    rows = [r for r in report.rows if landmark is None or r.landmark == landmark]
    faces = max((r.faces for r in rows), default=0)
    landmarks = len({r.landmark for r in rows})
    what = f"{faces} test faces"
    if landmark is None and landmarks > 1:
        what += f" ({landmarks} landmarks each)"
    return what


def sentences(
    report: CalibrationReport, landmark: str | None, levels: Sequence[float] = (0.9, 0.5)
) -> list[str]:
    """One markdown sentence per density (the marginal last): how often its regions at
    ``levels`` should hold the true position and how often they did, as drawn and after
    recalibration when there is one. ``landmark=None``: pooled over the landmarks."""
    faces = _faces_phrase(report, landmark)
    out = []
    for encoder in [*[e for e in densities(report) if e is not None], None]:
        drawn = curve(report, encoder, landmark, recalibrated=False)
        fixed = curve(report, encoder, landmark, recalibrated=True)
        parts = []
        for level in levels:
            got, after = _at(drawn, level), _at(fixed, level)
            if got is None:
                continue
            region = REGION_NAMES.get(level, f"{level:.0%}")
            did = _times(got.observed) + ("" if parts else " times")
            if after is not None:
                did += f" (after recalibration: {_times(after.observed)})"
            if not parts:
                guess = "the average-face guess" if encoder is None else "its guess"
                parts.append(
                    f"the {region} line around {guess} should hold the true position "
                    f"{level * 10:g} times out of 10; on {faces} it did {did}"
                )
            else:
                parts.append(
                    f"the {region} line should hold it {level * 10:g} times out of 10 "
                    f"and did {did}"
                )
        if parts:
            out.append(f"**{_density_name(encoder)}**: " + "; ".join(parts) + ".")
    return out


def recalibrated_faces(recalibrations: Mapping[str | None, Recalibration]) -> int:
    """How many held-out faces the regions' recalibration was fitted on."""
    return max((r.faces for r in recalibrations.values()), default=0)


def truth_line(pmap: PosteriorMap, levels: Sequence[float] = (0.5, 0.9)) -> str | None:
    """Whether this face's true position lies inside each region drawn, e.g. ``"inside the
    50% region ✓ · outside the 90% region ✗"``; ``None`` without a truth."""
    parts = []
    for level in levels:
        if level not in pmap.levels:
            continue
        inside = pmap.holds_truth(level)
        if inside is None:
            return None
        where = "inside" if inside else "outside"
        parts.append(f"{where} the {level:.0%} region {'✓' if inside else '✗'}")
    return "True position: " + " · ".join(parts) if parts else None


def coverage_line(
    report: CalibrationReport,
    encoder: str | None,
    landmark: str,
    recalibrated: bool,
    levels: Sequence[float] = (0.9, 0.5),
) -> str | None:
    """How often this density's regions, drawn as shown, held the truth over the test
    faces: ``"Over 300 test faces its 90% region held the truth 89% of the time (50%:
    52%)."``; ``None`` when that was not measured."""
    rows = curve(report, encoder, landmark, recalibrated)
    found = [c for c in (_at(rows, level) for level in levels) if c is not None]
    if not found:
        return None
    first, rest = found[0], found[1:]
    whose = "the" if encoder is None else "its"
    text = (
        f"Over {first.n} test faces {whose} {first.level:.0%} region held the truth "
        f"{first.observed:.0%} of the time"
    )
    if rest:
        text += " (" + ", ".join(f"{c.level:.0%}: {c.observed:.0%}" for c in rest) + ")"
    return text + "."


def map_notes(
    maps: Sequence[PosteriorMap], report: CalibrationReport | None, landmark: str
) -> dict[str | None, list[str]]:
    """The lines under each density's map: whether the truth lies inside its regions on
    this face (:func:`truth_line`), and how often they held it over the test faces, drawn
    as they are shown (:func:`coverage_line`; none without a report)."""
    out: dict[str | None, list[str]] = {}
    for pmap in maps:
        lines = [truth_line(pmap)]
        if report is not None:
            lines.append(coverage_line(report, pmap.encoder, landmark, pmap.recalibrated))
        out[pmap.encoder] = [line for line in lines if line]
    return out
