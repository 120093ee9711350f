"""End to end, in headless Chromium against a real ``streamlit run`` server: the app loads,
a training streams live values and can be stopped, posteriors draw, an upload renders.

Screenshots of each step: tests/e2e/screenshots/ (git-ignored).
"""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from playwright.sync_api import expect

EXCEPTION = '[data-testid="stException"]'
PLOT = ".js-plotly-plot"
LATEST = re.compile(r"Latest step (\d+):")

pytestmark = pytest.mark.e2e


def goto(page, server, path: str = "") -> None:
    page.goto(f"{server.url}/{path}")
    wait_idle(page)


def wait_idle(page, timeout: float = 90_000) -> None:
    """Until the app has drawn a title and no script run is in progress."""
    page.locator("h1").first.wait_for(timeout=timeout)
    page.wait_for_function(
        """() => {
            const s = document.querySelector('[data-testid="stStatusWidget"]');
            return !s || !/running/i.test(s.innerText);
        }""",
        timeout=timeout,
    )


def assert_healthy(page) -> None:
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
    assert not page.js_errors, page.js_errors


def appear(page, locator, timeout: float = 60_000) -> None:
    """Wait until ``locator`` is visible, failing at once if the app shows an exception."""
    locator.or_(page.locator(EXCEPTION)).first.wait_for(state="visible", timeout=timeout)
    assert_healthy(page)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def test_the_app_loads_on_the_train_page(page, server, screenshot):
    goto(page, server)
    page.get_by_role("heading", name="Train").first.wait_for()
    assert page.locator(".st-key-start button").is_enabled()
    for name in ("Train", "Results", "Posteriors", "Your photo", "About"):
        assert page.get_by_role("link", name=name).count() >= 1, name
    screenshot(page, "01-train-page")
    assert_healthy(page)


def test_results_and_about_render(page, server, screenshot):
    goto(page, server, "results")
    appear(page, page.locator(PLOT).first)
    detail = page.locator(".st-key-run_a").get_by_role("combobox")  # the newest run
    expect(detail).to_have_value(re.compile(re.escape(server.run_name)), timeout=60_000)
    screenshot(page, "02-results-page")
    assert_healthy(page)
    goto(page, server, "about")
    page.get_by_role("heading", name="About mist").wait_for()
    screenshot(page, "03-about-page")
    assert_healthy(page)


def test_a_training_streams_live_values_and_stops(page, server, screenshot):
    goto(page, server)
    page.get_by_text("Advanced settings").click()
    for label, value in [
        ("Training images", 32),
        ("Test images", 16),
        ("Image height (px)", 40),
        ("Image width (px)", 32),
        ("Batch size", 8),
        ("Epochs", 300),  # long enough to still be running when it is stopped
    ]:
        set_number(page, label, value)
    page.locator(".st-key-start button").click()
    page.wait_for_url(re.compile(r"[?&]job="))
    caption = page.get_by_text(LATEST)
    appear(page, caption)
    first = int(LATEST.search(caption.inner_text()).group(1))
    deadline = time.monotonic() + 20
    while True:  # the fragment redraws every 2 s (LIVE_REFRESH_S): the step must move on
        step = int(LATEST.search(caption.inner_text()).group(1))
        if step > first:
            break
        assert time.monotonic() < deadline, f"the live caption stayed at step {first} for 20 s"
        time.sleep(0.5)
    page.locator(PLOT).first.wait_for(state="visible")
    screenshot(page, "04-train-live-curves")
    assert_healthy(page)

    # a second tab on the same link (or a reload) finds the running job again
    second = page.context.new_page()
    second.js_errors = []  # what assert_healthy reads
    second.on("pageerror", lambda error: second.js_errors.append(str(error)))
    second.goto(page.url)
    other = second.get_by_text(LATEST)
    appear(second, other)
    assert int(LATEST.search(other.inner_text()).group(1)) >= first
    assert second.locator(".st-key-stop button").is_enabled()
    second.close()

    page.locator(".st-key-stop button").click()
    page.get_by_text(re.compile(r"^Stopped at step")).wait_for(timeout=60_000)
    # The live part shows the stop first; the page redraws Start as on a moment later (the
    # fragment's rerun of the whole app, which a busy CI delayed past a single read).
    expect(page.locator(".st-key-start button")).to_be_enabled(timeout=30_000)
    wait_idle(page)
    screenshot(page, "05-train-stopped")
    assert_healthy(page)


def test_a_posterior_figure_renders(page, server, screenshot):
    goto(page, server, "posteriors")
    appear(page, page.locator(PLOT).first)
    page.wait_for_function("n => document.querySelectorAll('.js-plotly-plot').length >= n", arg=3)
    page.get_by_text(re.compile(r"[+-]\d+\.\d\d nats")).first.wait_for()
    screenshot(page, "06-posteriors-page")
    assert_healthy(page)


def _face_jpeg(path) -> None:
    from PIL import Image

    from mist_core.data import SyntheticFaces

    face = SyntheticFaces(1, image_size=(436, 356)).render(0)[0]
    canvas = np.full((900, 800, 3), 128, dtype=np.uint8)
    canvas[150:586, 222:578] = face
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue())


def test_an_upload_renders(page, server, screenshot, tmp_path):
    goto(page, server, "photo")
    upload = page.locator('input[type="file"]')
    fake = tmp_path / "holiday.jpg"
    fake.write_bytes(b"%PDF-1.4\n1 0 obj\n<< >>\nendobj\ntrailer\n<< >>\n%%EOF\n")
    upload.set_input_files(str(fake))
    error = page.locator('[data-testid="stAlertContentError"]')
    appear(page, error)
    assert "PDF" in error.inner_text()
    screenshot(page, "07-photo-pdf-error")
    assert_healthy(page)

    photo = tmp_path / "face.jpg"
    _face_jpeg(photo)
    upload.set_input_files(str(photo))
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot').length >= n", arg=6, timeout=90_000
    )
    wait_idle(page)
    assert error.count() == 0
    page.get_by_text("800 x 900 pixels (JPEG)").wait_for()
    screenshot(page, "08-photo-upload")
    assert_healthy(page)
