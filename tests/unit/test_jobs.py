"""Background jobs: start, poll, stop, fail, queue, resume; no UI involved."""

from __future__ import annotations

import threading
import time

import pytest

from mist_core.calibration import CalibrationReport
from mist_core.experiment import preset
from mist_core.jobs import JobRegistry
from mist_core.runs import RunStatus

TINY = dict(
    train_size=48,
    test_size=16,
    image_size=(40, 32),
    batch_size=8,
    encoders=("random_init", "trained"),
    landmarks=("nose",),
    valid_fraction=0.0,
)


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture()
def registry(tmp_path):
    reg = JobRegistry(tmp_path / "runs")
    yield reg
    reg.shutdown(wait=True, timeout=60)


def test_a_job_runs_to_the_end_and_writes_its_run(registry):
    job = registry.submit(preset("demo-cpu", **TINY, epochs=1))
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.state is RunStatus.FINISHED, snap.error
    assert snap.step == 6 and snap.fraction == 1.0
    assert {"loss", "I(trained;nose)", "I(random_init;nose)"} <= set(snap.train_curves)
    assert [row.representation for row in snap.mi_table] == ["random_init", "trained"]
    run = registry.store.open(snap.run_name)
    assert run.status() is RunStatus.FINISHED
    metrics = run.read_metrics()
    assert sorted(metrics.loc[metrics.name == "loss", "step"]) == [1, 2, 3, 4, 5, 6]
    summary = run.summary()
    assert summary["steps"] == 6 and len(summary["mi"]) == 2
    assert summary["environment"]["torch"]
    assert run.has_checkpoint()
    # then how often the posterior regions hold the truth: no faces held out, no recalibration
    report = CalibrationReport.from_dict(summary["calibration"])
    assert [(r.encoder, r.landmark) for r in report.rows] == [
        (None, "nose"),
        ("random_init", "nose"),
        ("trained", "nose"),
    ]
    assert all(r.faces == TINY["test_size"] and r.recalibration is None for r in report.rows)
    assert snap.message == "finished"


def test_a_stop_while_the_regions_are_checked_keeps_the_run_finished(registry, monkeypatch):
    import mist_core.jobs.job as job_module

    def calibrate(experiment, *, progress, **kwargs):
        job.stop()
        progress("test", 1, 5)  # the next face: the stop is seen
        raise AssertionError("the stop was not seen")

    monkeypatch.setattr(job_module, "calibrate", calibrate)
    job = registry.submit(preset("demo-cpu", **TINY, epochs=1))
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.state is RunStatus.FINISHED, snap.error
    assert "stopped before the posterior regions were checked" in snap.message
    summary = registry.store.open(snap.run_name).summary()
    assert len(summary["mi"]) == 2 and "calibration" not in summary


def test_stop_takes_effect_within_a_step(registry):
    """Training stops after the step in progress; the job then saves its checkpoint (the
    trained ResNet18 and its Adam state, ~140 MB, ~1 s on this machine) and is STOPPED."""
    job = registry.submit(preset("demo-cpu", **TINY, epochs=200))
    _wait_for(lambda: job.snapshot().step >= 2)
    snap = job.snapshot()
    assert snap.state is RunStatus.RUNNING and snap.samples_per_s and snap.eta_s
    step_at_stop = snap.step
    asked = time.monotonic()
    job.stop()
    assert job.snapshot().state in (RunStatus.STOPPING, RunStatus.STOPPED)
    _wait_for(lambda: job.snapshot().message.startswith("saving") or job.snapshot().done)
    out_of_the_loop = time.monotonic() - asked
    assert out_of_the_loop < 1.0, f"training went on for {out_of_the_loop:.2f} s"
    assert job.wait(30)
    latency = time.monotonic() - asked
    snap = job.snapshot()
    assert snap.state is RunStatus.STOPPED, snap.error
    assert step_at_stop <= snap.step <= step_at_stop + 1, "at most the step in progress"
    # ~1 s when the machine is quiet (bench/README.md); generous here, where other test
    # processes may share the 2 cores: what matters is that the job ends, checkpointed
    assert latency < 20.0, f"stop took {latency:.2f} s"
    assert registry.store.open(snap.run_name).load_checkpoint().step == snap.step


def test_a_failing_job_reports_its_error_and_the_process_lives_on(registry, tmp_path):
    config = preset("demo-cpu", **TINY, dataset="celeba", celeba_root=str(tmp_path / "nowhere"))
    job = registry.submit(config)
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.state is RunStatus.FAILED
    assert "CelebAMissingError" in snap.error and "list_landmarks_align_celeba.txt" in snap.error
    assert "Traceback" in snap.traceback
    assert registry.store.open(snap.run_name).status() is RunStatus.FAILED
    # the registry still works
    ok = registry.submit(preset("demo-cpu", **TINY, epochs=1))
    assert ok.wait(120) and ok.snapshot().state is RunStatus.FINISHED


def test_one_job_per_device_and_cancel_while_queued(registry):
    first = registry.submit(preset("demo-cpu", **TINY, epochs=200))
    second = registry.submit(preset("demo-cpu", **TINY, epochs=1))
    _wait_for(lambda: first.snapshot().step >= 1)
    assert second.snapshot().state is RunStatus.QUEUED
    registry.cancel(second.id)
    assert second.wait(5)
    assert second.snapshot().state is RunStatus.STOPPED
    assert second.snapshot().run_name is None, "a cancelled queued job writes no run"
    first.stop()
    assert first.wait(30)
    with pytest.raises(KeyError, match="no job 'nope'"):
        registry.get("nope")
    assert [j.id for j in registry.jobs()] == [first.id, second.id]


def test_resume_continues_without_losing_or_repeating_metric_rows(registry):
    config = preset("demo-cpu", **TINY, epochs=3)  # 6 steps per epoch
    job = registry.submit(config)
    stop_seen = threading.Event()

    def stop_when_far_enough() -> bool:
        if job.snapshot().step >= 8:
            job.stop()
            stop_seen.set()
        return stop_seen.is_set() or job.snapshot().done

    _wait_for(stop_when_far_enough)
    assert job.wait(60)
    stopped_at = job.snapshot().step
    assert job.snapshot().state is RunStatus.STOPPED and 8 <= stopped_at < 18
    resumed = registry.resume(job.snapshot().run_name)
    assert resumed.wait(120)
    snap = resumed.snapshot()
    assert snap.state is RunStatus.FINISHED, snap.error
    assert snap.step == 18
    metrics = registry.store.open(snap.run_name).read_metrics()
    losses = metrics[(metrics.split == "train") & (metrics.name == "loss")]
    assert list(losses.step) == list(range(1, 19)), "every step exactly once, in order"
    with pytest.raises(FileNotFoundError):
        registry.resume(snap.run_name + "x")


def test_prepare_draws_the_images_once_and_a_job_reuses_them(registry):
    config = preset("demo-cpu", **TINY, epochs=1)
    assert registry.prepared_data(config) is None
    registry.prepare(config)
    data = registry.prepared_data(config)
    assert set(data) == {"train", "test"} and len(data["train"]) == 48
    assert registry.prepared_data(config.replace(seed=1)) is None  # other images
    assert registry.prepared_data(config.replace(epochs=3)) is data  # same images
    job = registry.submit(config)
    assert job.wait(120)
    assert job.snapshot().state is RunStatus.FINISHED
    assert registry.prepared_data(config) is data


def test_concurrent_prepares_of_the_same_data_do_the_work_once(registry, monkeypatch):
    from mist_core import experiment as experiment_module

    calls = []
    original = experiment_module.LandmarkExperiment._build_datasets

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(experiment_module.LandmarkExperiment, "_build_datasets", counted)
    config = preset("demo-cpu", **TINY, epochs=1)
    threads = [threading.Thread(target=registry.prepare, args=(config,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


# --- hardening (issue 13): states that never lie, bounded work, one writer per run ---------


def _mist_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mist-job-")]


def test_a_failure_inside_the_failure_path_still_ends_the_job_failed(registry, monkeypatch):
    """Writing metrics fails during training, and again while the job records its failure:
    the job still ends FAILED (in memory and in status.json), its waiters wake, the message
    says what else went wrong, and the run's writer lock is let go."""
    from mist_core.runs import Run

    calls = []

    def disk_full(self, rows):
        calls.append(len(list(rows)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Run, "append_metrics", disk_full)
    job = registry.submit(preset("demo-cpu", **TINY, epochs=1))
    assert job.wait(120), "the job never ended: its state would say running for ever"
    snap = job.snapshot()
    assert snap.state is RunStatus.FAILED and snap.done
    assert "No space left on device" in snap.error
    assert "its last metrics could not be written" in snap.message
    assert len(calls) >= 2, "the failure path tried to write the rows again"
    run = registry.store.open(snap.run_name)
    assert run.status() is RunStatus.FAILED
    run.acquire_writer().release()  # the lock was released
    assert registry.active() == [] and job.done
    # Stop on an ended job is a no-op, never "stopping" for ever.
    job.stop()
    assert job.snapshot().state is RunStatus.FAILED


def test_a_status_write_failing_in_the_failure_path_still_ends_failed(registry, monkeypatch):
    from mist_core.runs import Run

    original = Run.set_status

    def status(self, state, message=None, traceback=None):
        if RunStatus(state) is RunStatus.FAILED:
            raise OSError(5, "Input/output error")
        return original(self, state, message=message, traceback=traceback)

    def broken(self, rows):
        raise RuntimeError("metrics broke")

    monkeypatch.setattr(Run, "set_status", status)
    monkeypatch.setattr(Run, "append_metrics", broken)
    job = registry.submit(preset("demo-cpu", **TINY, epochs=1))
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.state is RunStatus.FAILED
    assert "metrics broke" in snap.error and "status could not be written" in snap.message
    run = registry.store.open(snap.run_name)
    assert run.status() is RunStatus.RUNNING  # what the disk says: the write failed...
    run.acquire_writer().release()  # ...but nobody owns it, so it shows as interrupted
    assert run.effective_status() is RunStatus.INTERRUPTED


def test_the_queue_is_bounded_and_queued_jobs_have_no_thread(tmp_path, blocking_train):
    from mist_core.jobs import QueueFullError

    registry = JobRegistry(tmp_path / "runs", max_queued=3)
    try:
        config = preset("demo-cpu", **TINY)
        before = len(threading.enumerate())
        jobs = [registry.submit(config) for _ in range(4)]  # one runs, three wait
        with pytest.raises(QueueFullError, match="max_queued=3"):
            registry.submit(config)
        assert len(registry.jobs()) == 4
        assert len(_mist_threads()) == 1, "waiting jobs must not have a thread"
        assert len(threading.enumerate()) <= before + 1 + 2  # + heartbeat, checkpoint writer
        assert [j.id for j in registry.active()] == [j.id for j in jobs]
        assert [j.snapshot().state for j in jobs[1:]] == [RunStatus.QUEUED] * 3
        jobs[2].stop()  # withdrawn from the queue at once
        assert jobs[2].wait(1) and jobs[2].snapshot().message == "cancelled while queued"
        registry.submit(config)  # its place is free again
        blocking_train.set()
        for job in registry.jobs():
            assert job.wait(30)
        # first in, first out: each started after the one before had ended
        assert blocking_train.started == [j.id for j in registry.jobs() if j is not jobs[2]]
        assert registry.active() == [] and _mist_threads() == []
    finally:
        registry.shutdown(wait=True, timeout=30)


def test_ended_jobs_are_forgotten_beyond_keep_finished(tmp_path, blocking_train):
    registry = JobRegistry(tmp_path / "runs", keep_finished=3)
    blocking_train.set()
    config = preset("demo-cpu", **TINY)
    ids = []
    for _ in range(6):
        job = registry.submit(config)
        assert job.wait(30)
        ids.append(job.id)
    assert [j.id for j in registry.jobs()] == ids[-3:]
    with pytest.raises(KeyError, match="forgotten"):
        registry.get(ids[0])
    assert registry.get(ids[-1]).snapshot().state is RunStatus.FINISHED


def test_exclusive_submits_from_two_threads_at_once_make_one_job(tmp_path, blocking_train):
    from mist_core.jobs import DeviceBusyError

    registry = JobRegistry(tmp_path / "runs")
    config = preset("demo-cpu", **TINY)
    try:
        for attempt in range(20):
            barrier = threading.Barrier(2)
            made, refused = [], []

            def press_start(barrier=barrier, made=made, refused=refused):
                barrier.wait()
                try:
                    made.append(registry.submit(config, exclusive=True))
                except DeviceBusyError as error:
                    refused.append(str(error))

            threads = [threading.Thread(target=press_start) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(made) == 1 and len(refused) == 1, (attempt, made, refused)
            assert "already running on cpu" in refused[0] and made[0].id in refused[0]
            assert registry.active("cpu") == made and registry.active("auto") == made
            made[0].stop()
            assert made[0].wait(10)
            assert registry.active() == []
    finally:
        registry.shutdown(wait=True, timeout=30)


def test_resume_of_a_run_locked_by_another_process_is_refused(registry, tmp_path):
    import subprocess
    import sys

    from mist_core.runs import RunBusyError

    job = registry.submit(preset("demo-cpu", **TINY, epochs=1))
    assert job.wait(120) and job.snapshot().state is RunStatus.FINISHED
    name = job.snapshot().run_name
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from mist_core.runs import RunStore; "
            f"w = RunStore({str(registry.store.root)!r}).open({name!r}).acquire_writer(); "
            "print('locked', flush=True); sys.stdin.read(); w.release()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = len(registry.jobs())
        with pytest.raises(RunBusyError, match=f"pid|PID|{holder.pid}"):
            registry.resume(name)
        assert len(registry.jobs()) == before, "no job was made"
    finally:
        holder.communicate("", timeout=30)
    # once the other process let go, resume works (and holds the lock itself)
    resumed = registry.resume(name)
    with pytest.raises(RunBusyError):
        registry.resume(name)  # the same process cannot resume it twice either
    assert resumed.wait(120)
    assert resumed.snapshot().state is RunStatus.FINISHED, resumed.snapshot().error


def test_a_config_too_big_for_the_machine_is_refused_before_any_thread(registry):
    from mist_core.resources import ResourceError

    before = threading.active_count()
    big = preset("demo-cpu", train_size=1_000_000, image_size=(218, 178))
    with pytest.raises(ResourceError):
        registry.submit(big)
    assert threading.active_count() == before and registry.jobs() == []


def test_stop_while_drawing_the_images_ends_stopped_within_2_s(registry):
    job = registry.submit(preset("demo-cpu", **(TINY | {"train_size": 2000}), epochs=1))
    _wait_for(lambda: job.snapshot().message.startswith("preparing"), timeout=30)
    time.sleep(0.5)  # well inside the drawing (~15 ms a face: 30 s for 2,000)
    asked = time.monotonic()
    job.stop()
    assert job.wait(2.0), f"still {job.snapshot().state} {time.monotonic() - asked:.1f} s later"
    snap = job.snapshot()
    assert snap.state is RunStatus.STOPPED and snap.message == "stopped while preparing the images"
    assert registry.store.open(snap.run_name).status() is RunStatus.STOPPED


def test_stop_while_another_thread_prepares_the_same_images_is_honoured(registry):
    """The warm-up draws the images; a job for the same images waits for it, and a stop
    must not wait for the warm-up to finish."""
    config = preset("demo-cpu", **(TINY | {"train_size": 600}), epochs=1)
    warm_up = threading.Thread(target=registry.prepare, args=(config,))
    warm_up.start()
    _wait_for(lambda: registry.prepared._data_locks, timeout=10)
    job = registry.submit(config)
    _wait_for(lambda: job.snapshot().message.startswith("preparing"), timeout=30)
    time.sleep(0.3)
    asked = time.monotonic()
    job.stop()
    assert job.wait(2.0), f"still {job.snapshot().state} {time.monotonic() - asked:.1f} s later"
    assert job.snapshot().state is RunStatus.STOPPED
    assert warm_up.is_alive(), "the test did not stop the job while the warm-up was drawing"
    warm_up.join(120)
