"""Every page renders, without a run and with a trained run (AppTest)."""

from __future__ import annotations

import pytest
from app_helpers import assert_no_exception, open_page, texts

PAGES = ["train", "results", "posteriors", "photo", "about"]
TITLES = {
    "train": "Train",
    "results": "Results",
    "posteriors": "Posteriors",
    "photo": "Your photo",
    "about": "About mist",
}
#: What a page says while there is nothing to show yet.
EMPTY_INFO = {
    "results": "No finished run yet",
    "posteriors": "No trained model yet",
    "photo": "Choose a photo above",
}


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_runs(empty_runs, page):
    at = open_page(page)
    assert_no_exception(at)
    assert [t.value for t in at.title] == [TITLES[page]]
    if page in EMPTY_INFO:
        assert EMPTY_INFO[page] in texts(at.info)
    assert not at.error


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_a_trained_run(trained, page):
    at = open_page(page)
    assert_no_exception(at)
    assert [t.value for t in at.title] == [TITLES[page]]
    assert not at.error
    if page == "results":
        assert at.multiselect(key="runs_shown").value == [trained[1]]
        assert at.selectbox(key="run_a").value == trained[1]
    if page == "posteriors":
        assert at.selectbox(key="post_run").value.name == trained[1]
    assert "No finished run yet" not in texts(at.info)
    assert "No trained model yet" not in texts(at.info)


def test_sidebar_explains_the_unit(empty_runs):
    at = open_page()
    assert "nats" in texts(at.sidebar.caption)


def test_train_page_defaults(empty_runs):
    """The default demo is preselected, Start is enabled and nothing trains yet."""
    at = open_page()
    assert at.selectbox[0].label == "Preset" or any(s.label == "Preset" for s in at.selectbox)
    preset_box = next(s for s in at.selectbox if s.label == "Preset")
    assert preset_box.value == "demo-cpu"
    assert not at.button(key="start").disabled
    assert at.button(key="stop").disabled
    assert "Nothing is training yet" in texts(at.caption)
    assert at.query_params.get("job") in (None, [], "")
