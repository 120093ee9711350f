"""End to end (issue 13): Start pressed in two tabs at once runs one job, which both tabs
show; Results over a malformed run shows a message, not a traceback.

Screenshots: tests/e2e/screenshots/ (git-ignored).
"""

from __future__ import annotations

import re
import shutil
import time

import pytest
from playwright.sync_api import expect
from test_e2e_app import EXCEPTION, LATEST, appear, assert_healthy, goto, set_number, wait_idle

pytestmark = pytest.mark.e2e

LONG = [
    ("Training images", 32),
    ("Test images", 16),
    ("Image height (px)", 40),
    ("Image width (px)", 32),
    ("Batch size", 8),
    ("Epochs", 300),  # still running when it is stopped
]


def _runs(server) -> set[str]:
    return {p.name for p in server.runs.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _new_tab(page):
    tab = page.context.new_page()
    tab.set_default_timeout(30_000)
    tab.js_errors = []  # what assert_healthy reads
    tab.on("pageerror", lambda error: tab.js_errors.append(str(error)))
    return tab


def test_start_in_two_tabs_runs_one_job(page, server, screenshot):
    before = _runs(server)
    tabs = [page, _new_tab(page)]
    for tab in tabs:
        goto(tab, server)
        tab.get_by_text("Advanced settings").click()
        for label, value in LONG:
            set_number(tab, label, value)
        # (a rerun for the last setting may still be on its way: wait for it, not a bit more)
        expect(tab.locator(".st-key-start button")).to_be_enabled(timeout=30_000)
    # As close together as two tabs can: both clicks dispatched before either page reruns.
    for tab in tabs:
        tab.locator(".st-key-start button").dispatch_event("click")
    deadline = time.monotonic() + 60
    while not any("job=" in tab.url for tab in tabs):
        if time.monotonic() > deadline:
            for i, tab in enumerate(tabs):
                screenshot(tab, f"FAILED-two-tabs-{i}")
            raise AssertionError(f"no tab started a job: {[tab.url for tab in tabs]}")
        page.wait_for_timeout(200)  # (time.sleep would not let Playwright see URL changes)
    page.wait_for_timeout(2000)  # let the other tab's click be handled too
    for tab in tabs:
        wait_idle(tab)
    owners = [tab for tab in tabs if "job=" in tab.url]
    assert len(owners) == 1, [tab.url for tab in tabs]
    mine, other = owners[0], next(tab for tab in tabs if tab is not owners[0])
    appear(mine, mine.get_by_text(LATEST), timeout=180_000)  # 2 shared cores: be patient
    new_runs = _runs(server) - before
    assert len(new_runs) == 1, f"exactly one job (one new run), got {sorted(new_runs)}"
    # The other tab shows the running job, with Start off and the reason said.
    appear(other, other.get_by_text("A training started elsewhere"))
    appear(other, other.get_by_text(LATEST), timeout=60_000)
    said = other.get_by_text(
        re.compile(r"(A training is already running|Not started: a training)")
    )
    assert said.count() >= 1
    starts = other.locator(".st-key-start button")  # (a redraw may show two for a moment)
    assert all(starts.nth(i).is_disabled() for i in range(starts.count()))
    screenshot(mine, "10-two-tabs-owner")
    screenshot(other, "11-two-tabs-other-tab")
    assert_healthy(mine)
    assert_healthy(other)

    other.locator(".st-key-stop button").click()  # either tab may stop it
    mine.get_by_text(re.compile(r"^Stopped at step")).wait_for(timeout=60_000)
    wait_idle(mine)
    # the rerun that turns Start back on may come a moment after the text (it raced in CI)
    mine.wait_for_function(
        "() => !document.querySelector('.st-key-start button').disabled", timeout=30_000
    )
    other.wait_for_function(
        "() => !document.querySelector('.st-key-start button').disabled", timeout=30_000
    )
    screenshot(other, "12-two-tabs-stopped")
    assert_healthy(mine)
    assert_healthy(other)
    other.close()


def test_results_over_a_malformed_run_shows_a_message(page, server, screenshot):
    broken = server.runs / "malformed-e2e"
    shutil.copytree(
        server.runs / server.run_name,
        broken,
        ignore=shutil.ignore_patterns("checkpoints", ".lock", "owner.json"),
    )
    (broken / "summary.json").write_text('{"mi": [{"encoder": "trained", "landmark": ')
    try:
        goto(page, server, "results")
        message = page.get_by_text(re.compile(r"could not be read and are left out"))
        appear(page, message)
        assert "malformed-e2e" in message.inner_text()
        page.get_by_text(server.run_name).first.wait_for()  # the good run is still shown
        page.get_by_text("Details", exact=True).click()
        page.get_by_text(re.compile(r"summary\.json is not valid JSON")).first.wait_for()
        screenshot(page, "13-results-malformed-run")
        assert page.locator(EXCEPTION).count() == 0
        assert_healthy(page)
    finally:
        shutil.rmtree(broken, ignore_errors=True)
