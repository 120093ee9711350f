"""Issue 13 on the pages (AppTest): one training per device across tabs, the resource
estimate before Start, malformed and interrupted runs shown as such, never a traceback."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from app_helpers import PAGES, assert_no_exception, new_app, open_page, state, texts

from mist_core.runs import RunStatus, RunStore

#: Advanced settings of a training that keeps running until it is stopped.
LONG_UI = {
    "Epochs": 300,
    "Training images": 32,
    "Test images": 16,
    "Image height (px)": 40,
    "Image width (px)": 32,
    "Batch size": 8,
}


def _set_advanced(at, values):
    inputs = {n.label: n for n in at.number_input}
    for label, value in values.items():
        inputs[label].set_value(value)
    at.run()
    assert_no_exception(at)
    return at


def _wait_until(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_second_tab_shows_the_running_job_and_cannot_start_another(empty_runs):
    first = _set_advanced(open_page(), LONG_UI)
    second = _set_advanced(open_page(), LONG_UI)  # drawn before anything runs: Start is on
    assert not second.button(key="start").disabled
    first.button(key="start").click().run()
    assert_no_exception(first)
    [job] = state.registry().active()
    assert first.query_params.get("job") == job.id
    # The second tab presses Start on its (stale) page: refused, no second job.
    second.button(key="start").click().run()
    assert_no_exception(second)
    assert [j.id for j in state.registry().jobs()] == [job.id], "exactly one job"
    # Its rerun sees the job before drawing Start (disabled: the click is void); had both
    # runs passed that point together, submit(exclusive=True) would have refused it.
    said = texts(second.error) + texts(second.warning)
    assert "A training is already running" in said or "Not started: a training" in said
    assert not second.query_params.get("job")
    # ...and it shows the running job, with Start off and the reason said.
    assert second.button(key="start").disabled
    assert "A training started elsewhere" in texts(second.info)
    _wait_until(lambda: job.snapshot().step >= 1, what="the first step")
    third = open_page()  # a new tab: same
    assert third.button(key="start").disabled
    assert "A training is already running: run" in texts(third.warning)
    assert job.snapshot().run_name in texts(third.warning)
    assert "Latest step" in texts(third.caption), "its curves are shown"
    assert not third.button(key="stop").disabled
    third.button(key="attach").click().run()
    assert third.query_params.get("job") == job.id
    third.button(key="stop").click().run()
    assert_no_exception(third)
    assert job.wait(60), "the job did not stop"
    assert job.snapshot().state is RunStatus.STOPPED
    fourth = open_page()
    assert not fourth.button(key="start").disabled
    assert state.registry().active() == []


def test_the_estimate_is_shown_and_a_config_too_big_cannot_start(empty_runs):
    at = open_page()
    assert "These settings need about" in texts(at.caption)
    assert not at.button(key="start").disabled
    _set_advanced(
        at,
        {"Training images": 1_000_000, "Image height (px)": 218, "Image width (px)": 178},
    )
    assert "too much for this machine" in texts(at.error)
    start = at.button(key="start")
    assert start.disabled and "more memory than this machine has" in texts(at.warning)
    assert state.registry().jobs() == []


@pytest.fixture
def runs_copy(trained, tmp_path, use_runs):
    """A runs folder with a copy of the trained run (checkpoints included)."""
    source_root, name = trained
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(source_root / name, root / name)
    use_runs(root)
    yield root, name
    state.registry().shutdown(wait=True, timeout=60)


@pytest.mark.parametrize(
    "summary",
    [
        b'{"mi": [{"encoder": "trained", "landmark": "nose", "mi": "lots"',  # truncated
        b"\x00\xff garbage",
        json.dumps({"mi": "not a list"}).encode(),
        json.dumps({"mi": [{"encoder": 1, "landmark": None, "mi": [], "std_error": {}}]}).encode(),
        json.dumps([1, 2, 3]).encode(),
    ],
    ids=["truncated", "garbage", "mi-not-a-list", "wrong-types", "not-an-object"],
)
def test_results_over_a_malformed_summary_shows_a_message(runs_copy, summary):
    root, name = runs_copy
    broken = root / "broken-run"
    shutil.copytree(root / name, broken, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    (broken / "summary.json").write_bytes(summary)
    for page in ("results", "posteriors", "train"):
        at = open_page(page if page != "train" else None)
        assert_no_exception(at)
        if page == "results":
            assert "could not be read and are left out: `broken-run`" in texts(at.warning)
            assert at.selectbox(key="run_a").value == name  # the good one is shown
            assert at.dataframe[0].value["Run"].tolist() == [name]  # alone in the table
    # Only the malformed run: a message, not a traceback.
    shutil.rmtree(root / name)
    at = open_page("results")
    assert_no_exception(at)
    assert "broken-run" in texts(at.warning) and "No finished run yet" in texts(at.info)


def test_an_interrupted_run_is_listed_and_can_be_resumed(runs_copy):
    root, name = runs_copy
    run = RunStore(root).open(name)
    run.set_status(RunStatus.RUNNING, message="training")  # then its process "died"
    assert run.effective_status() is RunStatus.INTERRUPTED
    at = open_page()
    assert "Interrupted runs" in [h.value for h in at.subheader]
    resume = at.button(key=f"resume_{name}")
    assert not resume.disabled
    # Results and Posteriors say so too.
    results = open_page("results")
    assert "were interrupted" in texts(results.info) and name in texts(results.info)
    posteriors = open_page("posteriors")
    assert_no_exception(posteriors)
    label = posteriors.selectbox(key="post_run").options[0]
    assert "interrupted" in label
    # A process holding the run's lock (here: another writer) makes Resume a message.
    holder = run.acquire_writer()
    try:
        at.button(key=f"resume_{name}").click().run()
        assert_no_exception(at)
        assert "Not resumed:" in texts(at.error) and "being trained" in texts(at.error)
        assert state.registry().jobs() == []
    finally:
        holder.release()
    at = open_page()
    at.button(key=f"resume_{name}").click().run()
    assert_no_exception(at)
    [job] = state.registry().jobs()
    assert at.query_params.get("job") == job.id and job.run_name == name
    assert job.wait(120)
    assert job.snapshot().state is RunStatus.FINISHED, job.snapshot().error
    assert run.effective_status() is RunStatus.FINISHED
    at = open_page()
    assert "Interrupted runs" not in [h.value for h in at.subheader]


def test_an_unknown_page_state_never_breaks_train_with_a_released_job(empty_runs):
    """A link to a job the registry has forgotten (ended long ago) is explained."""
    at = new_app()
    at.query_params["job"] = "0123456789ab"
    at.run()
    assert_no_exception(at)
    assert "ended long ago" in texts(at.info)
    assert PAGES


def test_results_reruns_do_not_read_the_metrics_again_and_the_download_is_cached(
    runs_copy, monkeypatch
):
    from mist_core.runs import Run

    root, name = runs_copy
    reads = []
    original = Run.read_metrics

    def counted(self):
        reads.append(self.name)
        return original(self)

    monkeypatch.setattr(Run, "read_metrics", counted)
    at = open_page("results")
    assert reads == [name]  # the training curves: read once for this version of the file
    for _ in range(3):
        at.run()
        assert_no_exception(at)
    assert reads == [name], "a rerun must not read metrics.csv again"
    labels = [d.proto.label for d in at.get("download_button")]
    assert "Download the training curves (CSV)" in labels
    first = state.metrics_csv(name)
    assert first.startswith(b"step,epoch,split,name,value\n") and len(reads) == 2
    assert state.metrics_csv(name) is first and len(reads) == 2  # same file version: cached
    RunStore(root).open(name).append_metrics([(999, 9, "train", "loss", 1.5)])
    second = state.metrics_csv(name)
    assert len(reads) == 3 and second.endswith(b"999,9,train,loss,1.5\n")
    at.run()  # the curves follow the new version of the file, read once more
    assert len(reads) == 4
