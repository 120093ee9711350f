"""Posteriors page (AppTest): one figure per density and the pointwise MI per network;
whether the truth lies inside each region, and how often it did over the test faces."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from app_helpers import TINY, assert_no_exception, charts, new_app, open_page, texts

from mist_core.calibration import FIT_LEVELS, CalibrationReport, Coverage, Recalibration
from mist_core.checkpoints import load_experiment
from mist_core.posterior import posterior_maps
from mist_core.runs import RunStore

N_ENCODERS = len(TINY["encoders"])


def test_posteriors_draw_one_figure_per_density(trained):
    root, name = trained
    at = open_page("posteriors")
    assert_no_exception(at)
    assert not at.error
    assert at.selectbox(key="post_run").value.name == name
    figures = charts(at)
    assert len(figures) == 1 + N_ENCODERS  # the marginal q(landmark), then one per network
    metrics = at.metric
    assert len(metrics) == N_ENCODERS
    for metric in metrics:
        assert "this face" in metric.label.lower() or "pointwise" in metric.label.lower()
        assert metric.value.endswith(" nats")
        float(metric.value.split()[0])  # "+0.42 nats"
    assert "densities evaluated at every pixel" in at.main.caption[-1].value


def test_posteriors_follow_the_controls(trained):
    at = open_page("posteriors")
    at.get_by_key("post_landmark").set_value("left_mouth").run()
    assert_no_exception(at)
    at.get_by_key("post_style").set_value("heatmap").run()
    assert_no_exception(at)
    assert len(charts(at)) == 1 + N_ENCODERS
    assert '"heatmap"' in charts(at)[1].proto.spec  # the style reached the figure
    at.button(key="thumb_3").click().run()  # the gallery picks a face
    assert_no_exception(at)
    assert at.number_input(key="post_index").value == 3
    assert at.main.caption[-1].value.startswith("Face 3 of the test set")
    last = TINY["test_size"] - 1
    at.number_input(key="post_index").set_value(last).run()
    assert_no_exception(at)
    assert len(at.metric) == N_ENCODERS


# --- calibration: do the regions hold the truth, on this face and over the test faces ----


def _copy_run(trained, tmp_path, use_runs, calibration) -> tuple[Path, str]:
    """The trained run, its files hard-linked (the checkpoint is ~140 MB), with
    ``summary["calibration"]`` replaced by ``calibration`` (``None``: removed). The summary
    is rewritten atomically, so the original run keeps its own."""
    source_root, name = trained
    root = tmp_path / "runs"
    shutil.copytree(
        source_root / name,
        root / name,
        copy_function=os.link,
        ignore=shutil.ignore_patterns(".lock"),
    )
    run = RunStore(root).open(name)
    summary = run.summary()
    summary.pop("calibration", None)
    if calibration is not None:
        summary["calibration"] = calibration
    run.write_summary(summary)
    use_runs(root)
    return root, name


def _report(root: Path, name: str) -> CalibrationReport:
    return CalibrationReport.from_dict(RunStore(root).open(name).summary()["calibration"])


def _recalibrated(report: CalibrationReport) -> CalibrationReport:
    """The report as if the run had held 12 faces out: regions of every density drawn at a
    mass well above their level (so the drawn regions change), coverage made up."""
    fit = Recalibration(FIT_LEVELS, tuple(min(1.0, lv + 0.08) for lv in FIT_LEVELS), 12)
    rows = tuple(
        replace(
            r,
            recalibration=fit,
            recalibrated=tuple(
                Coverage(c.level, min(1.0, c.level + 0.0625), c.std_error, c.n) for c in r.coverage
            ),
        )
        for r in report.rows
    )
    return replace(report, rows=rows)


def _maps(root: Path, name: str, landmark: str, face: int, recalibration=None) -> list:
    """What the page should draw for one test face, straight from mist_core."""
    experiment = load_experiment(RunStore(root).open(name), "latest")
    item = experiment.source_images("test")[face]
    image = (item["image"].clamp(0, 1) * 255).round() / 255
    truth = tuple(float(v) for v in item[landmark])
    return posterior_maps(experiment, image, landmark, truth=truth, recalibration=recalibration)


def _notes(at) -> list[str]:
    return [c.value for c in at.main.caption if c.value.startswith(("True position", "Over "))]


def _expected_truth_line(pmap) -> str:
    parts = [
        f"{'inside' if pmap.holds_truth(lv) else 'outside'} the {lv:.0%} region "
        f"{'✓' if pmap.holds_truth(lv) else '✗'}"
        for lv in (0.5, 0.9)
    ]
    return "True position: " + " · ".join(parts)


def test_posteriors_say_whether_the_truth_is_inside_and_how_often(trained):
    root, name = trained
    report = _report(root, name)
    at = open_page("posteriors")
    assert_no_exception(at)
    landmark = at.selectbox(key="post_landmark").value
    # no recalibration in this run: the toggle is off and greyed, the caption says why
    toggle = at.toggle(key="post_recalibrated")
    assert toggle.disabled and not toggle.value
    assert "Regions as the networks draw them" in texts(at.main.caption)
    notes = _notes(at)
    maps = _maps(root, name, landmark, 0)
    # under each density: the truth line, then its coverage over the test faces
    assert notes[0::2] == [_expected_truth_line(m) for m in maps]
    assert len(notes) == 2 * (1 + N_ENCODERS)
    row = report.row("trained", landmark)
    at90 = row.coverage[report.levels.index(0.9)]
    at50 = row.coverage[report.levels.index(0.5)]
    assert notes[-1] == (
        f"Over {TINY['test_size']} test faces its 90% region held the truth "
        f"{at90.observed:.0%} of the time (50%: {at50.observed:.0%})."
    )
    assert notes[1].startswith(f"Over {TINY['test_size']} test faces the 90% region")


def test_posteriors_draw_recalibrated_regions_with_a_toggle(trained, tmp_path, use_runs):
    report = _recalibrated(_report(*trained))
    root, name = _copy_run(trained, tmp_path, use_runs, report.to_dict())
    at = open_page("posteriors")
    assert_no_exception(at)
    landmark = at.selectbox(key="post_landmark").value
    toggle = at.toggle(key="post_recalibrated")
    assert not toggle.disabled and toggle.value  # recalibrated by default
    assert "Regions recalibrated on 12 held-out faces" in texts(at.main.caption)
    fixed = _maps(root, name, landmark, 0, report.recalibrations(landmark))
    assert all(m.recalibrated for m in fixed)
    notes = _notes(at)
    assert notes[0::2] == [_expected_truth_line(m) for m in fixed]
    row = report.row("trained", landmark)
    at90 = row.recalibrated[report.levels.index(0.9)]
    assert notes[-1].startswith(f"Over {TINY['test_size']} test faces its 90% region held")
    assert f"the truth {at90.observed:.0%} of the time" in notes[-1]
    # the figure draws the recalibrated contour (the 90% region's threshold)
    spec = charts(at)[-1].proto.spec
    assert f"{fixed[-1].levels[0.9]}" in spec

    toggle.set_value(False).run()
    assert_no_exception(at)
    assert "recalibration switched off" in texts(at.main.caption)
    drawn = _maps(root, name, landmark, 0)
    assert _notes(at)[0::2] == [_expected_truth_line(m) for m in drawn]
    at90 = row.coverage[report.levels.index(0.9)]
    assert f"the truth {at90.observed:.0%} of the time" in _notes(at)[-1]
    assert f"{drawn[-1].levels[0.9]}" in charts(at)[-1].proto.spec


def test_posteriors_over_a_damaged_or_missing_calibration(trained, tmp_path, use_runs):
    root, name = _copy_run(trained, tmp_path, use_runs, {"levels": [2.0]})
    at = open_page("posteriors")
    assert_no_exception(at)
    assert "calibration could not be read" in texts(at.info)
    assert len(charts(at)) == 1 + N_ENCODERS  # the maps are still drawn
    assert at.toggle(key="post_recalibrated").disabled
    assert all(n.startswith("True position") for n in _notes(at))  # no coverage line

    _copy_run(trained, tmp_path / "old", use_runs, None)
    at = open_page("posteriors")
    assert_no_exception(at)
    assert "No calibration for this run yet" in texts(at.info)
    assert len(charts(at)) == 1 + N_ENCODERS


def test_posteriors_keep_their_view_in_the_url(trained):
    root, name = trained
    at = open_page("posteriors")
    at.get_by_key("post_landmark").set_value("nose").run()
    at.get_by_key("post_style").set_value("heatmap").run()
    at.number_input(key="post_index").set_value(5).run()
    assert_no_exception(at)
    assert at.query_params["run"] == name
    assert at.query_params["landmark"] == "nose"
    assert at.query_params["view"] == "heatmap"
    assert at.query_params["face"] == "5"
    # a new session opened on that URL (a reload, a pasted link) shows the same view
    again = new_app()
    for key in ("run", "landmark", "view", "face"):
        again.query_params[key] = at.query_params[key]
    again.run()
    again.switch_page("views/posteriors.py").run()
    assert_no_exception(again)
    assert again.selectbox(key="post_run").value.name == name
    assert again.get_by_key("post_landmark").value == "nose"
    assert again.get_by_key("post_style").value == "heatmap"
    assert again.number_input(key="post_index").value == 5
    assert again.main.caption[-1].value.startswith("Face 5 of the test set")


def test_posteriors_ignore_a_link_to_a_face_that_is_not_there(trained):
    at = new_app()
    at.query_params["face"] = "99999"
    at.query_params["landmark"] = "ears"
    at.run()
    at.switch_page("views/posteriors.py").run()
    assert_no_exception(at)
    assert at.number_input(key="post_index").value == 0
    assert at.get_by_key("post_landmark").value == "left_eye"
