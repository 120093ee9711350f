"""End to end, in headless Chromium: a real photograph (scikit-image's astronaut, NASA's
public-domain portrait of Eileen Collins) uploads, the face detector's five points are drawn
as the reference, each network's distance to them is shown; the example button does the
same; a photo without a face is framed by hand. No exception, no JavaScript error.

Screenshots: tests/e2e/screenshots/ (git-ignored).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from test_e2e_app import assert_healthy, goto, wait_idle

from mist_core.photos import five_point_detector_available

REFERENCE = "Face detector's points (reference)"
SENTENCE = "from where the face detector finds it"
NETWORKS = ("Random init", "Trained from scratch")  # the tiny run's two encoders

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not five_point_detector_available(), reason="yuface has wheels for Linux and Windows only"
    ),
]


def _reference_traces(page) -> list[dict]:
    """``{"plot": index, "n": points}`` for each drawn trace of the reference points (read
    from the Plotly figures in the page, ``div.data``)."""
    return page.evaluate(
        """name => [...document.querySelectorAll('.js-plotly-plot')].flatMap((div, i) =>
            (div.data || []).filter(t => t.name === name)
                .map(t => ({plot: i, n: t.x.length,
                            finite: t.x.concat(t.y).every(Number.isFinite)})))""",
        REFERENCE,
    )


def _wait_for_the_distances(page) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot').length >= n", arg=6, timeout=120_000
    )
    page.get_by_text(SENTENCE).first.wait_for(timeout=120_000)
    wait_idle(page)


def _check_the_reference(page) -> None:
    traces = _reference_traces(page)
    # On the photo, on the aligned crop, and on the positions' figure: five points each.
    assert len(traces) == 3, traces
    assert all(t["n"] == 5 and t["finite"] for t in traces), traces
    page.get_by_text(REFERENCE).first.wait_for()  # the legend of the positions' figure
    page.get_by_text("aligned on the five points found by the face detector").first.wait_for()
    # Each network's distance, in a sentence, and the table.
    sentences = page.get_by_text(SENTENCE)
    assert sentences.count() == len(NETWORKS)
    said = " ".join(sentences.all_inner_texts())
    for network in NETWORKS:
        assert network in said, said
    table = page.locator('[data-testid="stDataFrame"]')
    table.wait_for(timeout=60_000)  # drawn lazily, once in view
    assert table.count() == 1
    page.get_by_text("trained on drawn faces").first.wait_for()


def _astronaut_jpeg(path) -> None:
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, format="JPEG", quality=92)
    path.write_bytes(buffer.getvalue())


def test_the_astronaut_gets_five_reference_points_and_distances(
    page, server, screenshot, tmp_path
):
    goto(page, server, "photo")
    photo = tmp_path / "astronaut.jpg"
    _astronaut_jpeg(photo)
    page.locator('input[type="file"]').set_input_files(str(photo))
    _wait_for_the_distances(page)
    page.get_by_text("512 x 512 pixels (JPEG)").wait_for()
    _check_the_reference(page)
    screenshot(page, "30-photo-astronaut-reference")
    page.locator('[data-testid="stDataFrame"]').scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the table's canvas paints after the scroll
    screenshot(page, "31-photo-astronaut-distances")
    assert_healthy(page)


def test_the_example_button_and_a_photo_without_a_face(page, server, screenshot, tmp_path):
    goto(page, server, "photo")
    page.get_by_role("button", name="No photo at hand? Try an example").click()
    _wait_for_the_distances(page)
    page.get_by_text("Eileen Collins").first.wait_for()
    _check_the_reference(page)
    assert_healthy(page)

    from PIL import Image

    wall = tmp_path / "wall.png"
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(wall)
    page.locator('input[type="file"]').set_input_files(str(wall))
    page.get_by_text("No face was found automatically").wait_for(timeout=90_000)
    page.get_by_text("No reference here").wait_for(timeout=90_000)
    wait_idle(page)
    assert page.get_by_text("Zoom").count() >= 1
    assert _reference_traces(page) == []
    screenshot(page, "32-photo-no-face-by-hand")
    assert_healthy(page)
