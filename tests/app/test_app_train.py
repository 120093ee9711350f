"""Train page (AppTest): Start trains a tiny run to the end; Stop stops one."""

from __future__ import annotations

import time

from app_helpers import PAGES, assert_no_exception, charts, open_page, state, texts

#: The Advanced settings of a run that trains in a few seconds (3 steps: 40% of the 32
#: training images are held out for validation, as in the demo preset, and 19 remain).
TINY_UI = {
    "Epochs": 1,
    "Training images": 32,
    "Test images": 16,
    "Image height (px)": 40,
    "Image width (px)": 32,
    "Batch size": 8,
}


def _set_advanced(at, **changes):
    values = TINY_UI | changes
    inputs = {n.label: n for n in at.number_input}
    for label, value in values.items():
        inputs[label].set_value(value)
    at.run()
    assert_no_exception(at)
    return at


def _only_job():
    jobs = state.registry().jobs()
    assert len(jobs) == 1, jobs
    return jobs[0]


def _rerun_until(at, done, timeout: float = 150.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert_no_exception(at)
        if done(at):
            return at
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_start_trains_to_the_end_and_shows_the_mi(empty_runs):
    at = open_page()
    arithmetic = next(s for s in at.selectbox if s.label == "Arithmetic")
    assert arithmetic.value == "auto"  # the config's default
    arithmetic.set_value("float32")
    at = _set_advanced(at)
    assert not at.warning, texts(at.warning)
    at.button(key="start").click().run()
    assert_no_exception(at)
    job = _only_job()
    assert at.query_params.get("job") == job.id  # the URL names the job
    config = job.snapshot().config
    assert (config.epochs, config.train_size, config.test_size) == (1, 32, 16)
    assert (config.image_size, config.batch_size) == ((40, 32), 8)
    assert config.precision == "float32"  # chosen below the defaults

    assert job.wait(timeout=150), "the tiny training did not end within 150 s"
    at = _rerun_until(at, lambda at: bool(at.success), 30, "the finished message")
    snap = job.snapshot()
    assert snap.state.value == "finished", snap.error
    message = at.success[0].value
    assert message.startswith("Finished in") and snap.run_name in message
    keys = [c.key for c in charts(at)]
    assert keys == ["live_curves", "final_bars"]
    final = charts(at)[1].proto.spec
    assert "Random init (frozen)" in final and "Trained from scratch" in final
    assert "Latest step 3:" in texts(at.caption)
    assert not at.button(key="start").disabled and at.button(key="stop").disabled
    # The run is saved with its MI table, and Results lists it.
    assert [info.name for info in state.runs_with_results()] == [snap.run_name]
    at.switch_page(f"{PAGES}/results.py").run()
    assert_no_exception(at)
    assert at.dataframe[0].value["Run"].tolist() == [snap.run_name]  # the table of runs
    assert len(at.dataframe[-1].value) == len(snap.mi_table) == 10  # its MI, in detail


def test_stop_stops_a_running_training(empty_runs):
    at = _set_advanced(open_page(), **{"Epochs": 200})
    at.button(key="start").click().run()
    assert_no_exception(at)
    job = _only_job()
    deadline = time.monotonic() + 120
    while job.snapshot().step < 2:  # stop it for real, not before it began
        assert time.monotonic() < deadline and not job.snapshot().done, job.snapshot()
        time.sleep(0.2)
    at.run()
    assert_no_exception(at)
    stop = at.button(key="stop")
    assert not stop.disabled and at.button(key="start").disabled
    assert "Latest step" in texts(at.caption)
    stop.click().run()
    assert_no_exception(at)
    assert job.wait(timeout=60), "the job did not stop within 60 s"
    snap = job.snapshot()
    assert snap.state.value == "stopped"
    assert snap.step < snap.total_steps
    at = _rerun_until(at, lambda at: bool(at.info), 30, "the stopped message")
    assert texts(at.info).startswith("Stopped at step")
    assert at.button(key="stop").disabled and not at.button(key="start").disabled
    # A stopped run keeps its checkpoint: Posteriors offers it, Results does not.
    assert [info.name for info in state.runs_with_checkpoint()] == [snap.run_name]
    assert state.runs_with_results() == []


def test_an_unknown_job_in_the_url_is_explained(empty_runs):
    from app_helpers import new_app

    at = new_app()
    at.query_params["job"] = "no-such-job"
    at.run()
    assert_no_exception(at)
    assert "not running in this server any more" in texts(at.info)


def test_no_network_or_no_landmark_is_a_warning_not_a_start(empty_runs):
    at = open_page()
    for box in at.checkbox:
        if box.key.startswith("encoder_") and not box.disabled:
            box.set_value(False)
    at.run()
    assert_no_exception(at)
    assert texts(at.warning) == "Pick at least one network."
    assert at.button(key="start").disabled
    at.checkbox(key="encoder_trained").set_value(True).run()
    at.pills(key="landmarks").set_value([]).run()
    assert_no_exception(at)
    assert texts(at.warning) == "Pick at least one landmark."
    assert at.button(key="start").disabled
