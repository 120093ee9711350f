"""End to end, in headless Chromium: the Results page's calibration chart (how often each
network's posterior regions hold the true position) renders beside the MI bars, with its
sentences; a run with a recalibration shows both views, and the Posteriors page draws its
regions recalibrated. No exception, no JavaScript error, no console error.

Screenshots: tests/e2e/screenshots/ (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace

import pytest
from test_e2e_app import EXCEPTION, PLOT, goto, wait_idle

from mist_core.calibration import FIT_LEVELS, CalibrationReport, Coverage, Recalibration
from mist_core.runs import RunStore

CHART = ".st-key-calibration_a"
#: The chart's lines: the band, the diagonal, the marginal and the tiny run's two networks.
TRACES = 5

pytestmark = pytest.mark.e2e


def watch_console(page) -> list[str]:
    """The page's console errors from now on, but for resources that failed to load (the
    browser's own lines for a 404 or an offline name: Streamlit asks for a few optional
    files, /PAGE/_stcore/health and host-config among them, and this machine has no
    network for Google's icon font)."""
    errors: list[str] = []

    def seen(message) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", seen)
    return errors


def assert_healthy(page, console: list[str]) -> None:
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
    assert not page.js_errors, page.js_errors
    assert not console, console


def wait_chart(page) -> None:
    """Until the calibration chart has drawn its lines as SVG."""
    chart = page.locator(f"{CHART} {PLOT}")
    chart.or_(page.locator(EXCEPTION)).first.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        """([sel, n]) => document.querySelectorAll(sel).length >= n""",
        arg=[f"{CHART} svg.main-svg .scatterlayer .trace", TRACES],
        timeout=30_000,
    )


def test_the_results_calibration_chart_renders(page, server, screenshot):
    console = watch_console(page)
    goto(page, server, "results")
    wait_chart(page)
    assert page.locator(PLOT).count() >= 2  # the MI bars and the calibration chart
    assert page.locator(f"{CHART} svg.main-svg").count() >= 1
    legend = page.locator(f"{CHART} .legend").first.text_content()
    for name in ("Average face (no picture)", "Random init", "Trained from scratch", "perfect"):
        assert name in legend, legend
    sentence = page.get_by_text(re.compile(r"yellow 90% line around its guess")).first
    sentence.wait_for()
    assert re.search(r"it did \d+\.\d times", sentence.inner_text())
    screenshot(page, "20-results-calibration")
    assert_healthy(page, console)


def _recalibrated(report: CalibrationReport) -> CalibrationReport:
    """As if the run had held 12 faces out: regions drawn a little wider."""
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


def test_a_recalibrated_run_on_results_and_posteriors(page, server, launch, screenshot):
    other = launch()
    # the session's run, hard-linked (its checkpoint is ~140 MB), with a recalibration
    shutil.copytree(
        server.runs / server.run_name,
        other.runs / server.run_name,
        copy_function=os.link,
        ignore=shutil.ignore_patterns(".lock", "owner.json"),
    )
    run = RunStore(other.runs).open(server.run_name)
    summary = run.summary()
    report = _recalibrated(CalibrationReport.from_dict(summary["calibration"]))
    run.write_summary({**summary, "calibration": report.to_dict()})  # a new file: atomic

    console = watch_console(page)
    goto(page, other, "results")
    wait_chart(page)
    page.get_by_text(re.compile(r"\(after recalibration: \d+\.\d\)")).first.wait_for()
    page.locator(".st-key-calib_fixed_a").get_by_text("Recalibrated regions").click()
    wait_idle(page)
    page.wait_for_function(
        # the chart is redrawn after the switch: its title may be missing for a moment
        "sel => /Recalibrated · all landmarks/.test(document.querySelector(sel)?.textContent)",
        arg=f"{CHART} .gtitle",
    )
    wait_chart(page)
    screenshot(page, "21-results-calibration-recalibrated")
    assert_healthy(page, console)

    goto(page, other, "posteriors")
    page.wait_for_function("n => document.querySelectorAll('.js-plotly-plot').length >= n", arg=3)
    page.get_by_text(re.compile(r"Regions recalibrated on 12 held-out faces")).wait_for()
    truth = re.compile(r"^True position: (inside|outside) the 50% region")
    page.get_by_text(truth).first.wait_for()
    page.get_by_text(re.compile(r"^Over 16 test faces its 90% region held")).first.wait_for()
    screenshot(page, "22-posteriors-recalibrated")
    assert_healthy(page, console)
