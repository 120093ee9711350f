"""End to end, in headless Chromium: Results as a researcher's bench. Three runs selected
(two of them seeds of one config), smoothing and a log axis switched on, the page's URL
opened in a new tab shows the same view, and a note edited on the page is what
``python -m mist_core list`` then prints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from playwright.sync_api import expect
from test_e2e_app import PLOT, goto, wait_idle
from test_e2e_calibration import assert_healthy, watch_console

from mist_core.runs import RunStore

pytestmark = pytest.mark.e2e

SEED1, OTHER = "seed-1-copy", "other-lr-copy"
NOTE = "baseline of the lr sweep"
SLIDER = ".st-key-smoothing input[type=range]"


def _three_runs(server, runs) -> list[str]:
    """The session's tiny run, a copy of it with seed 1 and one with another learning rate
    (configs edited as if by hand; checkpoints left out: Results does not read them)."""
    skip = shutil.ignore_patterns("checkpoints", ".lock", "owner.json")
    shutil.copytree(server.runs / server.run_name, runs / server.run_name, ignore=skip)
    for name, change in ((SEED1, {"seed": 1}), (OTHER, {"lr": 2e-3})):
        shutil.copytree(server.runs / server.run_name, runs / name, ignore=skip)
        config = json.loads((runs / name / "config.json").read_text())
        (runs / name / "config.json").write_text(json.dumps(config | change))
    return [server.run_name, SEED1, OTHER]


def fresh(key: str) -> str:
    """The element of widget ``key`` as drawn by the latest script run (while a run is in
    progress, Streamlit keeps the previous copy, marked stale, beside the new one)."""
    return f'.st-key-{key}[data-stale="false"]'


def _runs_in_url(page, n: int) -> None:
    """Until the page's URL names ``n`` runs (the script run that saw the change wrote it)."""
    page.wait_for_function(
        "n => (location.search.match(/[?&]run=/g) || []).length === n", arg=n, timeout=60_000
    )


def _pick_runs(page, names: list[str]) -> None:
    """Clear the selection (the newest run, picked at first), then pick ``names`` one by
    one from the drop-down, each time until the server has seen it."""
    box = page.locator(fresh("runs_shown"))
    box.get_by_role("button", name="Clear all").click()
    _runs_in_url(page, 0)
    for n, name in enumerate(names, start=1):
        box.locator("input").click()
        page.get_by_role("option", name=re.compile(re.escape(name))).first.click()
        page.keyboard.press("Escape")
        _runs_in_url(page, n)
    wait_idle(page)


def _curves_drawn(page) -> None:
    page.locator(f"{fresh('curves')} {PLOT} svg.main-svg").first.wait_for(timeout=60_000)


def _check_view(page, names: list[str]) -> None:
    for name in names:  # (the chips may wait for an icon this offline machine cannot fetch)
        expect(page.locator(".st-key-runs_shown")).to_contain_text(name, timeout=60_000)
    expect(page.locator(SLIDER)).to_have_value("0.3")
    expect(page.locator(".st-key-log_steps input[type=checkbox]")).to_be_checked()
    _curves_drawn(page)
    expect(page.locator(f"{fresh('curves')} .xtitle")).to_contain_text("log scale")


def test_compare_three_runs_share_the_view_and_keep_a_note(page, server, launch, screenshot):
    other = launch()
    names = _three_runs(server, other.runs)
    console = watch_console(page)
    goto(page, other, "results")
    _pick_runs(page, names)
    expect(page.locator(fresh("bars_compare"))).to_contain_text("mean of 2 seeds")

    slider = page.locator(SLIDER)
    slider.focus()
    for _ in range(30):  # steps of 0.01
        slider.press("ArrowRight")
    page.wait_for_url(re.compile(r"smooth=0\.3"), timeout=60_000)  # the server saw it
    wait_idle(page)
    page.locator(fresh("log_steps")).get_by_text("Logarithmic step axis").click()
    page.wait_for_url(re.compile(r"log=1"), timeout=60_000)
    wait_idle(page)
    _check_view(page, names)
    screenshot(page, "40-results-compare")
    shared = page.url
    assert shared.count("run=") == 3 and "smooth=0.3" in shared and "log=1" in shared, shared
    assert_healthy(page, console)

    # the copied link, opened in a new tab, opens the same view
    tab = page.context.new_page()
    tab_errors: list[str] = []
    tab.on("pageerror", lambda error: tab_errors.append(str(error)))
    tab.goto(shared)
    wait_idle(tab)
    _check_view(tab, names)
    screenshot(tab, "41-results-compare-reopened")
    assert not tab_errors, tab_errors
    tab.close()

    # a note edited on the page is stored with the run and listed by the CLI
    name = names[0]  # the first run picked is the one shown in detail
    detail = page.locator(fresh("run_a")).get_by_role("combobox")
    expect(detail).to_have_value(re.compile(re.escape(name)), timeout=60_000)
    page.locator(f".st-key-note_text_{name} textarea").fill(NOTE)
    page.locator(f".st-key-note_tags_{name} input").fill("baseline, sweep")
    page.locator(".st-key-save_notes button").click()
    wait_idle(page)
    page.get_by_text("Notes saved with the run.").first.wait_for()
    assert RunStore(other.runs).open(name).notes().note == NOTE
    listed = subprocess.run(
        [sys.executable, "-m", "mist_core", "--run-dir", str(other.runs), "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in listed.splitlines() if line.startswith(name))
    assert NOTE in line and "[baseline, sweep]" in line, line
    screenshot(page, "42-results-notes")
    assert_healthy(page, console)
