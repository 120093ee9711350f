"""Results page (AppTest): the run's MI table, downloads, comparing two runs, and the
calibration of the posterior regions."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from app_helpers import (
    N_LANDMARKS,
    TINY,
    assert_no_exception,
    charts,
    open_page,
    texts,
    tiny_config,
)

from mist_core.calibration import FIT_LEVELS, CalibrationReport, Coverage, Recalibration
from mist_core.results import PairEstimate
from mist_core.runs import RunStore

KEEP, DROP = object(), object()  # _copy_run: keep the summary's calibration / remove it


def test_results_show_the_run_table_and_downloads(trained):
    root, name = trained
    at = open_page("results")
    assert_no_exception(at)
    # The newest run is picked to compare, and shown in detail.
    assert at.multiselect(key="runs_shown").value == [name]
    run_box = at.selectbox(key="run_a")
    networks = "Random init, Trained from scratch"
    assert run_box.options == [f"{name} (finished) · synthetic · {networks}"]
    assert run_box.value == name

    # st.dataframe without selections carries no key: the tables come in page order: the
    # runs, the compared MI, then the run in detail's table.
    assert len(at.dataframe) == 3
    runs = at.dataframe[0].value
    assert runs["Run"].tolist() == [name] and runs["Status"].tolist() == ["finished"]
    table = at.dataframe[-1].value
    # (a ⚠ column beside the MI appears only when a number is flagged: see below)
    shown = [c for c in table.columns if c != "⚠"]
    assert shown == ["Network", "Landmark", "MI (nats)", "± std. error"]
    assert len(table) == len(TINY["encoders"]) * N_LANDMARKS
    assert set(table["Network"]) == {"Random init (frozen)", "Trained from scratch"}
    assert table["MI (nats)"].notna().all()
    assert [c.key for c in charts(at)] == ["curves", "bars_compare", "bars_a", "calibration_a"]

    downloads = at.get("download_button")
    labels = [d.proto.label for d in downloads]
    assert labels == [
        "Download the compared runs (CSV)",
        "Download the table (CSV)",
        "Download the training curves (CSV)",
    ]


def test_results_mark_flagged_numbers_and_say_why(tmp_path, use_runs):
    """A run made by hand (no training): one of its two rows carries a warning."""
    from mist_core.checkpoints import run_store
    from mist_core.runs import RunStatus

    store = run_store(tmp_path / "runs")
    run = store.create(tiny_config(), name="flagged")
    run.set_status(RunStatus.FINISHED)
    why = "the 5 highest and 5 lowest of 2,000 per-sample terms move the estimate by -7,600 nats"
    rows = [
        PairEstimate("trained", "nose", 0.8, 0.02, 2000, "doe").to_dict(),
        PairEstimate("random_init", "nose", -7591.0, 7591.0, 2000, "js", (why,)).to_dict(),
    ]
    rows[0].pop("warnings")  # a row of a run saved before warnings existed
    run.write_summary({"mi": rows, "steps": 6, "epochs": 1})
    use_runs(store.root)
    at = open_page("results")
    assert_no_exception(at)
    table = at.dataframe[-1].value  # the run in detail's table
    assert list(table.columns) == ["Network", "Landmark", "MI (nats)", "⚠", "± std. error"]
    assert table["⚠"].tolist() == ["", "⚠"]
    [expander] = [e for e in at.expander if "flagged" in e.label]
    assert expander.label == "⚠ Why some numbers are flagged"
    assert f"**Random init · Nose**: {why}" in texts(expander.markdown)
    assert "Trained" not in texts(expander.markdown)


# --- calibration: how often the posterior regions hold the truth -------------------------

ENCODERS = TINY["encoders"]


def _copy_run(trained, tmp_path, use_runs, calibration=KEEP) -> tuple[Path, str]:
    """The trained run copied without its checkpoints (Results does not read them), with
    ``summary["calibration"]`` replaced by ``calibration`` (``DROP``: removed)."""
    source_root, name = trained
    root = tmp_path / "runs"
    shutil.copytree(
        source_root / name, root / name, ignore=shutil.ignore_patterns("checkpoints", ".lock")
    )
    run = RunStore(root).open(name)
    summary = run.summary()
    if calibration is DROP:
        summary.pop("calibration", None)
    elif calibration is not KEEP:
        summary["calibration"] = calibration
    run.write_summary(summary)
    use_runs(root)
    return root, name


def _report(root: Path, name: str) -> CalibrationReport:
    return CalibrationReport.from_dict(RunStore(root).open(name).summary()["calibration"])


def _traces(chart) -> list[dict]:
    return json.loads(chart.proto.spec)["data"]


def _density_lines(chart) -> list[dict]:
    """The chart's lines of densities (not the band, not the diagonal)."""
    return [t for t in _traces(chart) if t.get("mode") == "lines+markers"]


def _sentence(at, who: str) -> str:
    found = [m.value for m in at.markdown if m.value.startswith(f"**{who}**")]
    assert len(found) == 1, [m.value for m in at.markdown]
    return found[0]


def test_the_trained_run_carries_its_calibration(trained):
    root, name = trained
    report = _report(root, name)
    assert len(report.rows) == (1 + len(ENCODERS)) * N_LANDMARKS
    assert {r.faces for r in report.rows} == {TINY["test_size"]}
    # valid_fraction=0: no faces held out, so no recalibration
    assert all(r.recalibration is None for r in report.rows)


def test_results_draw_the_calibration_chart_beside_the_bars(trained):
    root, name = trained
    report = _report(root, name)
    at = open_page("results")
    assert_no_exception(at)
    assert [c.key for c in charts(at)][-2:] == ["bars_a", "calibration_a"]
    chart = at.get("plotly_chart")[-1]
    lines = _density_lines(chart)
    # one line per network, and the no-image marginal (greyed, dotted)
    assert [t["name"] for t in lines] == [
        "Average face (no picture)",
        "Random init",
        "Trained from scratch",
    ]
    assert lines[0]["line"]["dash"] == "dot"
    names = [t.get("name") for t in _traces(chart)]
    assert "perfect" in names and "chance (± 2 s.e.)" in names
    # pooled over the landmarks by default: the line is the report's pooled coverage
    pooled = report.pooled("trained")
    assert lines[2]["y"] == pytest.approx([100 * c.observed for c in pooled])
    assert lines[2]["x"] == pytest.approx([100 * lv for lv in report.levels])
    # no recalibration in this run: the toggle is off and says why
    toggle = at.toggle(key="calib_fixed_a")
    assert toggle.disabled and not toggle.value
    # one sentence per density; its figure is the report's (times out of 10)
    text = _sentence(at, "Trained from scratch")
    at90 = pooled[report.levels.index(0.9)].observed
    assert f"it did {at90 * 10:.1f} times" in text
    assert "yellow 90% line" in text and "9 times out of 10" in text
    assert f"on {TINY['test_size']} test faces ({N_LANDMARKS} landmarks each)" in text
    assert "after recalibration" not in text
    _sentence(at, "Random init (frozen)")
    _sentence(at, "Average face (no picture)")


def test_results_calibration_per_landmark(trained):
    root, name = trained
    report = _report(root, name)
    at = open_page("results")
    at.selectbox(key="calib_landmark_a").set_value("nose").run()
    assert_no_exception(at)
    row = report.row("random_init", "nose")
    lines = _density_lines(at.get("plotly_chart")[-1])
    assert lines[1]["y"] == pytest.approx([100 * c.observed for c in row.coverage])
    text = _sentence(at, "Random init (frozen)")
    at50 = row.coverage[report.levels.index(0.5)].observed
    assert f"cyan 50% line should hold it 5 times out of 10 and did {at50 * 10:.1f}" in text
    assert f"on {TINY['test_size']} test faces it did" in text


def _recalibrated(report: CalibrationReport) -> CalibrationReport:
    """The report as if the run had held faces out: every density recalibrated on 12."""
    fit = Recalibration(FIT_LEVELS, tuple(min(1.0, lv + 0.05) for lv in FIT_LEVELS), 12)
    rows = tuple(
        replace(
            r,
            recalibration=fit,
            recalibrated=tuple(
                Coverage(c.level, c.level + 0.0625, c.std_error, c.n) for c in r.coverage
            ),
        )
        for r in report.rows
    )
    return replace(report, rows=rows)


def test_results_calibration_as_drawn_and_recalibrated(trained, tmp_path, use_runs):
    report = _recalibrated(_report(*trained))
    _copy_run(trained, tmp_path, use_runs, report.to_dict())
    at = open_page("results")
    assert_no_exception(at)
    toggle = at.toggle(key="calib_fixed_a")
    assert not toggle.disabled and not toggle.value  # as drawn first
    text = _sentence(at, "Trained from scratch")
    drawn = report.pooled("trained")[report.levels.index(0.9)].observed
    fixed = report.pooled("trained", recalibrated=True)[report.levels.index(0.9)].observed
    assert f"it did {drawn * 10:.1f} times (after recalibration: {fixed * 10:.1f})" in text
    toggle.set_value(True).run()
    assert_no_exception(at)
    chart = at.get("plotly_chart")[-1]
    assert "Recalibrated · all landmarks" in json.dumps(
        json.loads(chart.proto.spec)["layout"]["title"], ensure_ascii=False
    )
    lines = _density_lines(chart)
    assert len(lines) == 1 + len(ENCODERS)
    expected = report.pooled("trained", recalibrated=True)
    assert lines[2]["y"] == pytest.approx([100 * c.observed for c in expected])


@pytest.mark.parametrize(
    "damaged",
    [{"levels": "x"}, [1, 2], {"levels": [0.5], "split": "test", "rows": [{"faces": 0}]}],
    ids=["bad-levels", "not-an-object", "bad-row"],
)
def test_results_over_a_damaged_calibration_shows_a_note(trained, tmp_path, use_runs, damaged):
    _copy_run(trained, tmp_path, use_runs, damaged)
    at = open_page("results")
    assert_no_exception(at)
    assert "calibration could not be read" in texts(at.info)
    # the MI bars and tables are still there
    assert [c.key for c in charts(at)] == ["curves", "bars_compare", "bars_a"]
    assert len(at.dataframe) == 3


def test_results_of_an_old_run_without_calibration_give_the_hint(trained, tmp_path, use_runs):
    root, name = _copy_run(trained, tmp_path, use_runs, DROP)
    at = open_page("results")
    assert_no_exception(at)
    hint = texts(at.info)
    assert "No calibration for this run yet" in hint
    assert f"python -m mist_core evaluate {name} --save" in hint
    assert [c.key for c in charts(at)] == ["curves", "bars_compare", "bars_a"]
