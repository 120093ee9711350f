"""Results page as a researcher's bench (AppTest): the run table and its search, several
runs compared (curves with smoothing and a log axis, bars, the settings that differ),
seeds grouped into mean ± standard error, notes and tags, repeat with more seeds, chart
export, and every selection in the URL."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_helpers import TINY, assert_no_exception, charts, new_app, open_page, state

from mist_core import cli
from mist_core.results import PairEstimate
from mist_core.runs import RunStore

OTHER = "other-lr"


@pytest.fixture
def three_runs(two_runs, tmp_path, use_runs) -> tuple[Path, str, str, str]:
    """``(folder, seed0, seed1, other)``: the two tiny runs that differ only by seed, and a
    copy of the first with another learning rate (its config edited as if by hand), all
    without checkpoints (Results does not read them)."""
    source, older, newer = two_runs
    root = tmp_path / "runs"
    skip = shutil.ignore_patterns("checkpoints", ".lock")
    for name in (older, newer):
        shutil.copytree(source / name, root / name, ignore=skip)
    shutil.copytree(source / older, root / OTHER, ignore=skip)
    config = json.loads((root / OTHER / "config.json").read_text())
    config["lr"] = 2e-3
    (root / OTHER / "config.json").write_text(json.dumps(config))
    use_runs(root)
    return root, older, newer, OTHER


def _mi(root: Path, name: str) -> dict[tuple[str, str], float]:
    rows = RunStore(root).open(name).summary()["mi"]
    return {(e.representation, e.target): e.mi for e in map(PairEstimate.from_dict, rows)}


def _spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def _values(data) -> np.ndarray:
    """A trace's numbers: plotly writes numpy arrays as base64 (``{"dtype", "bdata"}``)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
    return np.asarray(data, dtype=float)


def _chart(at, key: str):
    [found] = [c for c in charts(at) if c.key == key]
    return found


def _pick(at, names: list[str]):
    at.multiselect(key="runs_shown").set_value(names).run()
    assert_no_exception(at)
    return at


def test_the_run_table_lists_every_run_and_the_search_filters_it(three_runs):
    root, seed0, seed1, other = three_runs
    at = open_page("results")
    assert_no_exception(at)
    table = at.dataframe[0].value
    assert set(table["Run"]) == {seed0, seed1, other}
    assert sorted(table["Seed"]) == [0, 0, 1]
    expected = np.mean(list(_mi(root, seed1).values()))
    assert table.set_index("Run").loc[seed1, "Mean MI (nats)"] == pytest.approx(expected, abs=1e-3)
    at.text_input(key="run_search").set_value(other).run()
    assert_no_exception(at)
    assert at.dataframe[0].value["Run"].tolist() == [other]
    assert at.query_params["q"] == other


def test_seeds_are_grouped_into_a_mean_with_its_standard_error(three_runs):
    root, seed0, seed1, other = three_runs
    at = _pick(open_page("results"), [seed0, seed1, other])
    assert at.toggle(key="group_seeds").value  # on by default
    compared = at.dataframe[1].value
    group = [c for c in compared.columns if "mean of 2 seeds" in c]
    assert len(group) == 1 and other in compared.columns
    a, b = _mi(root, seed0), _mi(root, seed1)
    first = compared.iloc[0]
    pair = ("random_init", "left_eye")
    mean, error = (float(v) for v in first[group[0]].split(" ± "))
    assert first["Network"] == "Random init (frozen)" and first["Landmark"] == "Left eye"
    assert mean == pytest.approx((a[pair] + b[pair]) / 2, abs=1e-3)
    assert error == pytest.approx(abs(a[pair] - b[pair]) / 2, abs=1e-3)  # s.e. of 2 values
    # the group's curve has a band (a filled trace) and a held-out mark per network
    curves = _spec(_chart(at, "curves"))["data"]
    assert sum(t.get("fill") == "toself" for t in curves) == len(TINY["encoders"])
    # the bars: one per entry and network
    bars = _spec(_chart(at, "bars_compare"))["data"]
    assert len(bars) == 2 * len(TINY["encoders"])
    # off: one entry per run
    at.toggle(key="group_seeds").set_value(False).run()
    assert_no_exception(at)
    assert set(at.dataframe[1].value.columns) == {"Network", "Landmark", seed0, seed1, other}
    assert len(_spec(_chart(at, "bars_compare"))["data"]) == 3 * len(TINY["encoders"])
    assert at.query_params["seeds"] == "0"


def test_the_settings_that_differ_are_listed(three_runs):
    root, seed0, seed1, other = three_runs
    at = _pick(open_page("results"), [seed0, seed1, other])
    differ = at.dataframe[2].value
    assert sorted(differ.index) == ["lr", "seed"]
    assert differ.loc["lr", other] == "0.002"
    assert differ.loc["seed", seed1] == "1"


def test_curves_follow_the_landmark_smoothing_and_log_axis(three_runs):
    root, seed0, seed1, other = three_runs
    at = _pick(open_page("results"), [seed0, other])
    spec = _spec(_chart(at, "curves"))
    lines = [t for t in spec["data"] if t.get("name")]
    assert len(lines) == 2 * len(TINY["encoders"])  # colour by run, dash by network
    assert {t["line"]["dash"] for t in lines} == {"dot", "longdash"}
    assert len({t["line"]["color"] for t in lines}) == 2
    assert all(t.get("opacity") is None for t in spec["data"])  # smoothing off: raw only
    markers = [t for t in spec["data"] if t.get("mode") == "markers"]
    held_out = _mi(root, seed0)[("trained", "left_eye")]
    assert held_out in [m["y"][0] for m in markers]  # the final estimate is marked
    raw = _values(next(t for t in lines if t["line"]["dash"] == "dot")["y"])

    at.selectbox(key="curve_landmark").set_value("nose").run()
    assert "Nose" in _spec(_chart(at, "curves"))["layout"]["title"]["text"]
    at.slider(key="smoothing").set_value(0.8).run()
    at.selectbox(key="curve_landmark").set_value("left_eye").run()
    spec = _spec(_chart(at, "curves"))
    faint = [t for t in spec["data"] if t.get("opacity") == 0.25]
    assert len(faint) == 2 * len(TINY["encoders"])  # the raw points stay behind
    smooth = _values(
        next(t for t in spec["data"] if t.get("name") and t["line"]["dash"] == "dot")["y"]
    )
    assert smooth[0] == pytest.approx(raw[0]) and np.std(smooth) < np.std(raw)
    assert spec["layout"]["xaxis"].get("type") != "log"
    at.toggle(key="log_steps").set_value(True).run()
    assert_no_exception(at)
    assert _spec(_chart(at, "curves"))["layout"]["xaxis"]["type"] == "log"
    assert at.query_params["smooth"] == "0.8" and at.query_params["log"] == "1"
    assert "landmark" not in at.query_params  # the default landmark keeps a plain URL


def test_the_url_reopens_the_same_view(three_runs):
    root, seed0, seed1, other = three_runs
    at = new_app()
    at.query_params["run"] = [seed1, other]
    at.query_params["smooth"] = "0.5"
    at.query_params["log"] = "1"
    at.query_params["landmark"] = "nose"
    at.query_params["seeds"] = "0"
    at.query_params["detail"] = other
    at.run()
    at.switch_page("views/results.py").run()
    assert_no_exception(at)
    assert at.multiselect(key="runs_shown").value == [seed1, other]
    assert at.slider(key="smoothing").value == 0.5
    assert at.toggle(key="log_steps").value is True
    assert at.toggle(key="group_seeds").value is False
    assert at.selectbox(key="curve_landmark").value == "nose"
    assert at.selectbox(key="run_a").value == other


def test_a_link_to_a_run_that_is_gone_falls_back_to_the_newest(three_runs):
    at = new_app()
    at.query_params["run"] = ["deleted-run"]
    at.query_params["smooth"] = "7"  # out of range: ignored
    at.run()
    at.switch_page("views/results.py").run()
    assert_no_exception(at)
    assert len(at.multiselect(key="runs_shown").value) == 1
    assert at.slider(key="smoothing").value == 0.0


def test_chart_downloads_follow_the_format(three_runs):
    at = open_page("results")
    config = json.loads(_chart(at, "bars_compare").proto.config)
    assert config["toImageButtonOptions"]["format"] == "png"
    at.radio(key="export_format").set_value("svg").run()
    assert_no_exception(at)
    for chart in charts(at):
        assert json.loads(chart.proto.config)["toImageButtonOptions"]["format"] == "svg"


def test_notes_and_tags_are_saved_searchable_and_listed(three_runs, capsys):
    root, seed0, seed1, other = three_runs
    at = open_page("results")
    name = at.selectbox(key="run_a").value
    at.text_area(key=f"note_text_{name}").set_value("baseline for the lr sweep")
    at.text_input(key=f"note_tags_{name}").set_value("baseline, sweep")
    at.button(key="save_notes").click().run()
    assert_no_exception(at)
    assert at.success[0].value == "Notes saved with the run."
    notes = RunStore(root).open(name).notes()
    assert notes.note == "baseline for the lr sweep" and notes.tags == ("baseline", "sweep")
    row = at.dataframe[0].value.set_index("Run").loc[name]
    assert row["Tags"] == "baseline, sweep" and row["Note"] == "baseline for the lr sweep"
    at.text_input(key="run_search").set_value("sweep").run()
    assert at.dataframe[0].value["Run"].tolist() == [name]
    assert cli.main(["--run-dir", str(root), "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if name in line)
    assert "[baseline, sweep]" in line and "baseline for the lr sweep" in line


def test_a_bad_tag_is_refused_with_a_reason(three_runs):
    root, *_ = three_runs
    at = open_page("results")
    name = at.selectbox(key="run_a").value
    at.text_input(key=f"note_tags_{name}").set_value("x" * 60)
    at.button(key="save_notes").click().run()
    assert_no_exception(at)
    assert "not saved" in at.error[0].value and "40" in at.error[0].value
    assert RunStore(root).open(name).notes().tags == ()


def test_repeat_with_more_seeds_queues_the_same_config(three_runs):
    root, seed0, seed1, other = three_runs
    at = _pick(open_page("results"), [seed0])
    at.selectbox(key="run_a").set_value(seed0).run()
    at.button(key="repeat_seeds").click().run()
    assert_no_exception(at)
    assert "Queued 3 runs with seeds 2, 3, 4" in at.success[0].value  # 0 and 1 are taken
    jobs = state.registry().jobs()
    assert sorted(job.config.seed for job in jobs) == [2, 3, 4]
    base = RunStore(root).open(seed0).config()
    for job in jobs:
        assert job.config.lr == base["lr"] and job.config.epochs == base["epochs"]
        job.stop()


def test_the_compared_runs_csv_holds_each_entry_s_numbers(three_runs):
    import io

    import pandas as pd
    from ui import run_groups

    root, seed0, seed1, other = three_runs
    infos = {i.name: i for i in state.list_runs()}
    entries = run_groups.shown([infos[seed0], infos[seed1], infos[other]], by_seed=True)
    table = pd.read_csv(io.BytesIO(run_groups.compared_csv(entries)))
    assert list(table.columns) == [
        "entry",
        "runs",
        "seeds",
        "encoder",
        "landmark",
        "mi",
        "std_error",
        "runs_averaged",
    ]
    group = table[table["runs_averaged"] == 2]
    assert set(group["runs"]) == {f"{seed0} {seed1}"} and set(group["seeds"]) == {"0 1"}
    a, b = _mi(root, seed0), _mi(root, seed1)
    for row in group.itertuples():
        pair = (row.encoder, row.landmark)
        assert row.mi == pytest.approx((a[pair] + b[pair]) / 2)
    alone = table[table["entry"] == other]
    assert len(alone) == len(_mi(root, other)) and (alone["runs_averaged"] == 1).all()
