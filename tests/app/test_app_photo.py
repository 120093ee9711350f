"""Your photo page (AppTest uploads files): a face, a PDF named .jpg, then a face again."""

from __future__ import annotations

from app_helpers import PDF_BYTES, TINY, assert_no_exception, charts, face_jpeg, open_page, texts

N_ENCODERS = len(TINY["encoders"])


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
