"""Faults in a training job's files, and floods of jobs (issue 13, items 3 and 7).

A job must end finished, stopped or failed whatever fails, including the writes it makes
while recording its own failure; it must let go of its run's writer lock and its device;
and a flood of submits must not make threads or registry entries without bound.
"""

from __future__ import annotations

import threading
import time

from mist_core.experiment import preset
from mist_core.jobs import DeviceBusyError, JobRegistry, QueueFullError
from mist_core.runs import Run, RunStatus

#: A few seconds of training: 6 steps; one frozen encoder, so checkpoints are small.
TINY = dict(
    train_size=48,
    test_size=16,
    image_size=(40, 32),
    batch_size=8,
    epochs=1,
    valid_fraction=0.0,
    encoders=("random_init",),
    landmarks=("nose",),
)
ENDED = (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.FAILED)


def _raise(what: str):
    def fail(*args, **kwargs):
        raise OSError(28, f"No space left on device ({what})")

    return fail


def _status_fails_for(states):
    original = Run.set_status

    def set_status(self, status, message=None, traceback=None):
        if RunStatus(status) in states:
            raise OSError(5, f"Input/output error (status {RunStatus(status).value})")
        return original(self, status, message=message, traceback=traceback)

    return set_status


#: name -> ({Run method: replacement}, the state the job must end in, words of the message)
CASES = {
    "metrics append fails, and again in the failure path": (
        {"append_metrics": _raise("metrics")},
        RunStatus.FAILED,
        "its last metrics could not be written",
    ),
    "checkpoint write fails": (
        {"save_checkpoint": _raise("checkpoint")},
        RunStatus.FAILED,
        "could not save a checkpoint",
    ),
    "checkpoint write fails, then the failed status write": (
        {
            "save_checkpoint": _raise("checkpoint"),
            "set_status": _status_fails_for({RunStatus.FAILED}),
        },
        RunStatus.FAILED,
        "status could not be written",
    ),
    "summary write fails": (
        {"write_summary": _raise("summary")},
        RunStatus.FAILED,
        "(summary)",
    ),
    "summary write fails, then the failed status write": (
        {
            "write_summary": _raise("summary"),
            "set_status": _status_fails_for({RunStatus.FAILED}),
        },
        RunStatus.FAILED,
        "status could not be written",
    ),
    "every status write after creation fails": (
        {"set_status": _status_fails_for({RunStatus.RUNNING, RunStatus.FINISHED})},
        RunStatus.FINISHED,
        "status could not be written",
    ),
    "metrics, checkpoint, summary and status writes all fail": (
        {
            "append_metrics": _raise("metrics"),
            "save_checkpoint": _raise("checkpoint"),
            "write_summary": _raise("summary"),
            "set_status": _status_fails_for({RunStatus.RUNNING, RunStatus.FAILED}),
        },
        RunStatus.FAILED,
        "its last metrics could not be written",
    ),
}


def test_a_failure_inside_the_failure_path_always_ends_the_job(tmp_path, monkeypatch):
    tried, held, failures = 0, 0, []
    for index, (name, (patches, expected, words)) in enumerate(CASES.items()):
        tried += 1
        registry = JobRegistry(tmp_path / f"runs-{index}")
        with monkeypatch.context() as patch:
            for method, replacement in patches.items():
                patch.setattr(Run, method, replacement)
            job = registry.submit(preset("demo-cpu", **TINY))
            ended = job.wait(120)
        snap = job.snapshot()
        problems = []
        if not ended:
            problems.append("never ended")
            registry.shutdown(wait=True, timeout=60)
        if snap.state is not expected:
            problems.append(f"state {snap.state.value}, expected {expected.value}")
        if words not in snap.message:
            problems.append(f"message {snap.message!r} lacks {words!r}")
        if registry.active():
            problems.append("still holds its device")
        if snap.run_name is not None:
            try:  # the writer lock was let go: another writer gets it
                registry.store.open(snap.run_name).acquire_writer().release()
            except Exception as error:  # noqa: BLE001 - counted
                problems.append(f"run still locked: {error}")
        job.stop()  # a no-op on an ended job: never "stopping" for ever
        if job.snapshot().state not in ENDED:
            problems.append(f"stop made it {job.snapshot().state.value}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
        else:
            held += 1
    report = f"failure inside the failure path: tried {tried}, held {held}"
    print(f"\n{report}")
    assert held == tried, report + "\n" + "\n".join(failures)
    assert not [t for t in threading.enumerate() if t.name.startswith("mist-job-")]


def test_300_submits_make_bounded_threads_and_registry(tmp_path, blocking_train):
    registry = JobRegistry(tmp_path / "runs")  # the defaults: max_queued 8, keep_finished 20
    config = preset("demo-cpu", **TINY)
    threads_before = threading.active_count()
    accepted, refused, busy = [], 0, 0
    peak_threads = 0
    for i in range(300):
        try:
            accepted.append(registry.submit(config, exclusive=i % 2 == 1))
        except QueueFullError:
            refused += 1
        except DeviceBusyError:
            busy += 1
        peak_threads = max(peak_threads, threading.active_count() - threads_before)
    held = []
    held.append(len(accepted) == 1 + registry.max_queued)
    held.append(refused + busy == 300 - len(accepted) and busy == 150)
    held.append(peak_threads <= 3)  # the running job, its run's heartbeat, a writer
    held.append(len(registry.jobs()) == len(accepted))
    blocking_train.set()
    for job in accepted:
        held.append(job.wait(30))
    # 300 more, one after the other: the registry forgets all but the last 20 ended
    for _ in range(300):
        job = registry.submit(config, exclusive=True)
        held.append(job.wait(30))
        peak_threads = max(peak_threads, threading.active_count() - threads_before)
    held.append(len(registry.jobs()) == registry.keep_finished)
    held.append(registry.active() == [])
    time.sleep(0.2)
    held.append(not [t for t in threading.enumerate() if t.name.startswith("mist-job-")])
    report = (
        f"600 submits: accepted {len(accepted)} of the first 300 (queue full {refused}, "
        f"device busy {busy}); peak extra threads {peak_threads}; registry keeps "
        f"{len(registry.jobs())}; checks tried {len(held)}, held {sum(held)}"
    )
    print(f"\n{report}")
    assert all(held), report
