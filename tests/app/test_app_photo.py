"""Your photo page (AppTest uploads files): a face, a PDF named .jpg, then a face again; a
real photo (scikit-image's astronaut) with the face detector's five points as a reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from app_helpers import (
    N_LANDMARKS,
    PDF_BYTES,
    TINY,
    assert_no_exception,
    charts,
    face_jpeg,
    open_page,
    texts,
)

from mist_core.photos import five_point_detector_available

N_ENCODERS = len(TINY["encoders"])
REFERENCE = "Face detector's points (reference)"
needs_yuface = pytest.mark.skipif(
    not five_point_detector_available(), reason="yuface has wheels for Linux and Windows only"
)


def _upload(at, name: str, data: bytes, mime: str = "image/jpeg"):
    at.file_uploader[0].set_value((name, data, mime)).run()
    assert_no_exception(at)
    return at


def test_a_photo_shows_the_alignment_and_the_posteriors(trained):
    at = _upload(open_page("photo"), "face.jpg", face_jpeg())
    assert not at.error
    keys = [c.key for c in charts(at)]
    assert "photo_original" in keys and "photo_aligned" in keys and "photo_modes" in keys
    # The photo, the aligned crop, the marginal + one map per network, the positions.
    assert len(keys) == 2 + 1 + N_ENCODERS + 1
    assert "800 x 900 pixels (JPEG)" in texts(at.caption)
    assert at.selectbox(key="photo_run").value.name == trained[1]
    # Other controls redraw without error.
    at.get_by_key("photo_landmark").set_value("nose").run()
    assert_no_exception(at)
    at.get_by_key("photo_style").set_value("heatmap").run()
    assert_no_exception(at)
    at.get_by_key("photo_encoder").set_value("random_init").run()
    assert_no_exception(at)
    assert "Random init" in charts(at)[-1].proto.spec


def test_framing_by_hand(trained):
    at = _upload(open_page("photo"), "face.jpg", face_jpeg())
    manual = at.toggle[0]
    manual.set_value(True).run()
    assert_no_exception(at)
    assert [s.label for s in at.slider] == ["Zoom", "Move left / right", "Move up / down"]
    at.slider[0].set_value(2.0).run()
    assert_no_exception(at)
    assert "framed by hand" in texts(at.caption)


def test_a_pdf_named_jpg_gets_a_friendly_error_and_the_page_still_works(trained):
    at = _upload(open_page("photo"), "holiday.jpg", PDF_BYTES)
    assert len(at.error) == 1
    message = at.error[0].value
    assert "PDF" in message, message
    assert "Traceback" not in message and "Error:" not in message
    assert not charts(at)
    at = _upload(at, "face.jpg", face_jpeg())
    assert not at.error
    assert len(charts(at)) == 2 + 1 + N_ENCODERS + 1


def test_a_photo_without_runs_says_to_train_first(empty_runs):
    at = _upload(open_page("photo"), "face.png", face_jpeg(), "image/png")
    assert not at.error
    assert "No trained model yet" in texts(at.info)
    assert [c.key for c in charts(at)] == ["photo_original", "photo_aligned"]


def _astronaut_jpeg() -> bytes:
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _reference_traces(at, key: str) -> list[dict]:
    import json

    chart = next(c for c in charts(at) if c.key == key)
    data = json.loads(chart.proto.spec)["data"]
    return [t for t in data if t.get("name") == REFERENCE]


def _distances(at):
    """The distance table (the page's only table)."""
    (table,) = at.dataframe
    return table.value


@needs_yuface
def test_a_real_photo_gets_the_detectors_five_points_and_the_distances(trained):
    at = _upload(open_page("photo"), "astronaut.jpg", _astronaut_jpeg())
    assert not at.error
    caption = texts(at.caption)
    assert "512 x 512 pixels (JPEG)" in caption
    assert "aligned on the five points found by the face detector" in caption
    # The five reference points on the photo, the aligned crop and the positions' figure.
    for key in ("photo_original", "photo_aligned", "photo_modes"):
        (trace,) = _reference_traces(at, key)
        assert len(trace["x"]) == len(trace["y"]) == 5, key
    (aligned,) = _reference_traces(at, "photo_aligned")
    # Aligned on them: each within 5 px of the average face's landmark (measured <= 3.5 px).
    template = np.array(
        [[69.0, 111.2], [107.6, 111.5], [88.5, 135.3], [71.5, 152.1], [105.4, 152.3]]
    )
    assert np.abs(np.column_stack([aligned["x"], aligned["y"]]) - template).max() < 5
    # One row per network and landmark, with finite numbers.
    table = _distances(at)
    assert len(table) == N_ENCODERS * N_LANDMARKS
    assert set(table["Network"]) == {"Random init", "Trained from scratch"}
    assert np.isfinite(table["Distance (px)"]).all()
    assert np.isfinite(table["Log-density there"]).all()
    sentences = texts(at.markdown)
    assert "from where the face detector finds it" in sentences
    assert "trained on drawn faces" in texts(at.info)  # the tiny run is on drawn faces
    # Another landmark and framing by hand keep the reference.
    at.get_by_key("photo_landmark").set_value("nose").run()
    assert_no_exception(at)
    assert "puts the nose" in texts(at.markdown)
    at.toggle[0].set_value(True).run()
    assert_no_exception(at)
    assert len(_distances(at)) == N_ENCODERS * N_LANDMARKS


@needs_yuface
def test_the_example_button_shows_the_astronaut(trained):
    at = open_page("photo")
    assert "Choose a photo above to begin." in texts(at.info)
    at.button(key="photo_example_button").click().run()
    assert_no_exception(at)
    assert "Eileen Collins" in texts(at.caption)
    assert "512 x 512 pixels (PNG)" in texts(at.caption)
    assert len(_distances(at)) == N_ENCODERS * N_LANDMARKS


def test_a_photo_without_a_face_is_framed_by_hand_without_a_reference(trained):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(buffer, format="PNG")
    at = _upload(open_page("photo"), "wall.png", buffer.getvalue(), "image/png")
    assert "No face was found automatically" in texts(at.warning)
    assert "framed by hand" in texts(at.caption)
    assert "No reference here" in texts(at.caption)
    assert not _reference_traces(at, "photo_original")
    assert not list(at.dataframe)
    assert len(charts(at)) == 2 + 1 + N_ENCODERS + 1
