"""Results page (AppTest): the run's MI table, downloads, comparing two runs."""

from __future__ import annotations

import pandas as pd
from app_helpers import N_LANDMARKS, TINY, assert_no_exception, charts, open_page


def test_results_show_the_run_table_and_downloads(trained):
    root, name = trained
    at = open_page("results")
    assert_no_exception(at)
    run_box = at.selectbox(key="run_a")
    assert len(run_box.options) == 1 and run_box.options[0].startswith(f"{name} (finished)")
    assert run_box.value.name == name

    # st.dataframe without selections carries no key: the tables come in page order.
    assert len(at.dataframe) == 1
    table = at.dataframe[0].value
    assert list(table.columns) == ["Network", "Landmark", "MI (nats)", "± std. error"]
    assert len(table) == len(TINY["encoders"]) * N_LANDMARKS
    assert set(table["Network"]) == {"Random init (frozen)", "Trained from scratch"}
    assert table["MI (nats)"].notna().all()
    assert [c.key for c in charts(at)] == ["bars_a"]

    downloads = at.get("download_button")
    labels = [d.proto.label for d in downloads]
    assert labels == ["Download the table (CSV)", "Download the training curves (CSV)"]
    # The compare toggle needs a second run.
    assert at.toggle(key="compare").disabled


def test_results_compare_two_runs_side_by_side(two_runs, use_runs):
    root, older, newer = two_runs
    use_runs(root)
    at = open_page("results")
    assert_no_exception(at)
    assert at.selectbox(key="run_a").value.name == newer  # newest first
    toggle = at.toggle(key="compare")
    assert not toggle.disabled
    toggle.set_value(True).run()
    assert_no_exception(at)
    assert at.selectbox(key="run_b").value.name == older
    assert len(at.dataframe) == 3  # run A's table, run B's, then side by side
    side = at.dataframe[2].value
    assert list(side.columns) == [
        "Network",
        "Landmark",
        f"A: {newer}",
        f"B: {older}",
        "B - A (nats)",
    ]
    assert len(side) == len(TINY["encoders"]) * N_LANDMARKS
    expected = (side[f"B: {older}"] - side[f"A: {newer}"]).round(3)
    pd.testing.assert_series_equal(side["B - A (nats)"], expected, check_names=False, atol=2e-3)
    # Both runs' tables and charts are shown.
    assert len(at.dataframe[1].value) == len(side)
    assert [c.key for c in charts(at)] == ["bars_a", "bars_b"]
    assert len(at.get("download_button")) == 4
