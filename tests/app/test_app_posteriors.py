"""Posteriors page (AppTest): one figure per density and the pointwise MI per network."""

from __future__ import annotations

from app_helpers import TINY, assert_no_exception, charts, open_page

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
