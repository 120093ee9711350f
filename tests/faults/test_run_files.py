"""Damaged run files and two processes on one run (issue 13: items 4, 5, 6, 13 and 15).

A tiny run is trained once per module. Each case copies it (checkpoint tensors hard-linked,
every other file copied), damages one file in one way (truncated, garbage bytes, wrong JSON
types, over its size limit, a symlink to a file outside the run, a folder in its place,
empty) and checks that:

- ``RunStore.list()`` and ``python -m mist_core list`` (in-process) do not raise, exit 0,
  still list the run, and name the damaged file in the run's problem when ``list`` reads it;
- ``evaluate`` exits 0 or 2 without a traceback; with 2, one ``error:`` line naming the file;
- nothing is lost: unless the damaged file is part of the checkpoint itself, the last good
  checkpoint still loads and verifies, and the metrics hold every training step.

Then the lock: a second writer of a run held by another process is refused (in this process
and through ``python -m mist_core resume``), and after kill -9 of the holder the run lists as
interrupted, can be resumed and deleted.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mist_core import runs
from mist_core.checkpoints import run_store
from mist_core.cli import main
from mist_core.experiment import preset
from mist_core.jobs import JobRegistry
from mist_core.runs import RunBusyError, RunStatus
from mist_core.runs._files import _json_bytes

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(
    train_size=48,
    test_size=16,
    image_size=(40, 32),
    batch_size=8,
    epochs=1,
    valid_fraction=0.0,
    encoders=("random_init", "trained"),
)
STEP = 6  # 48 images in batches of 8, one epoch
CKPT = f"checkpoints/step-{STEP:08d}"

#: The run files, and whether ``list`` reads them (so must name them when damaged).
FILES = {
    "config.json": True,
    "status.json": True,
    "summary.json": True,
    "metrics.csv": False,  # list reads its last line only; damage shows in read_metrics
    "owner.json": True,
    "checkpoints/latest.json": True,
    f"{CKPT}.json": False,  # checkpoint files are verified when loaded (evaluate)
    f"{CKPT}.safetensors": False,
    f"{CKPT}.optim.pt": False,
}
MODES = ("truncated", "garbage", "wrong-types", "huge", "symlink", "folder", "empty")
#: Damage that is tolerated by design, not a problem: a torn last line, skipped rows.
TOLERATED = {
    ("metrics.csv", "truncated"),
    ("metrics.csv", "garbage"),
    ("metrics.csv", "wrong-types"),
}


class _Tally:
    def __init__(self, what: str) -> None:
        self.what, self.tried, self.held, self.failures = what, 0, 0, []

    @contextlib.contextmanager
    def case(self, label: str) -> Iterator[None]:
        self.tried += 1
        try:
            yield
        except AssertionError as error:
            self.failures.append(f"{label}: {error}")
        else:
            self.held += 1

    def report(self) -> None:
        line = f"{self.what}: {self.held} of {self.tried} cases held"
        print(line)
        assert not self.failures, line + "\n" + "\n".join(self.failures)


def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    return saved


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Iterator[Path]:
    """The folder of one finished tiny run (checkpoint included)."""
    root = tmp_path_factory.mktemp("trained")
    saved = _one_thread()
    try:
        job = JobRegistry(root).submit(preset("demo-cpu", **TINY))
        assert job.wait(timeout=300), "the tiny training did not end within 5 min"
        snap = job.snapshot()
        assert snap.state is RunStatus.FINISHED, snap.error
    finally:
        torch.set_num_threads(saved)
    run = run_store(root).open(snap.run_name)
    assert run.load_checkpoint().step == STEP
    yield run.path
    shutil.rmtree(root, ignore_errors=True)


def _copy(source: Path, root: Path, name: str) -> Path:
    """A copy of the run: checkpoint tensors hard-linked (never written in place here)."""

    def copy(src: str, dst: str) -> None:
        if src.endswith((".safetensors", ".optim.pt")):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    target = root / name
    shutil.copytree(source, target, copy_function=copy)
    return target


def _owner_bytes() -> bytes:
    now = time.time()
    return _json_bytes({"pid": 1, "host": "gone.example", "started": now, "heartbeat": now})


WRONG_TYPES: dict[str, bytes] = {
    "config.json": b'{"batch_size": "abc", "epochs": [1], "encoders": 5}',
    "status.json": b'{"status": 5, "created": "yesterday"}',
    "summary.json": b'{"mi": [{"encoder": 1, "landmark": null, "mi": "x"}], "steps": 1.5}',
    "metrics.csv": b"step,epoch,split,name,value\nx,y,train,loss,abc\n1.5,0,train,loss,[]\n",
    "owner.json": b'{"pid": "me", "host": 7, "started": "now"}',
    "checkpoints/latest.json": b'{"step": "6", "files": []}',
    f"{CKPT}.json": b'{"step": 6, "epoch": "0", "files": {"model": "../../evil.pt"}}',
    f"{CKPT}.safetensors": b'{"this": "is json, not safetensors"}',
    f"{CKPT}.optim.pt": b"\x80\x04\x95not a pickle either",
}


def _limit(relative: str) -> int:
    if relative.endswith(".csv"):
        return runs.MAX_METRICS_BYTES
    if relative.endswith((".safetensors", ".pt")):
        return runs.MAX_CHECKPOINT_BYTES
    return runs.MAX_JSON_BYTES


def _damage(run: Path, relative: str, mode: str, outside: Path) -> None:
    path = run / relative
    original = path.read_bytes() if path.exists() else _owner_bytes()
    if path.exists():
        path.unlink()  # never write into a hard-linked original
    if mode == "truncated":
        path.write_bytes(original[: len(original) // 2])
    elif mode == "garbage":
        path.write_bytes(os.urandom(max(64, min(len(original), 4096))))
    elif mode == "wrong-types":
        path.write_bytes(WRONG_TYPES[relative])
    elif mode == "huge":
        with open(path, "wb") as f:
            f.write(original[:100])
            f.truncate(_limit(relative) + 1)  # sparse: no disk, and never read whole
    elif mode == "symlink":
        target = outside / f"{run.name}-{path.name}"
        target.write_bytes(original)  # valid content: refused for being a link
        path.symlink_to(target)
    elif mode == "folder":
        path.mkdir()
        (path / "inside").write_text("x")
    elif mode == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(mode)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _cases() -> list[tuple[str, str]]:
    return [(f, m) for f in FILES for m in MODES] + [("checkpoints", "symlink")]


def _damaged_runs(trained: Path, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    root = tmp_path / "runs"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    for index, (relative, mode) in enumerate(_cases()):
        run = _copy(trained, root, f"case-{index:03d}")
        if relative == "checkpoints":
            moved = outside / f"{run.name}-checkpoints"
            (run / "checkpoints").rename(moved)
            (run / "checkpoints").symlink_to(moved, target_is_directory=True)
        else:
            _damage(run, relative, mode, outside)
        yield relative, mode, run


def _nothing_lost(run: Path, relative: str) -> None:
    """The last good checkpoint loads and verifies; the metrics hold every training step."""
    if relative.startswith("checkpoints") and relative != "checkpoints/latest.json":
        return
    opened = run_store(run.parent).open(run.name)
    assert opened.load_checkpoint().step == STEP, "the last good checkpoint does not load"
    if relative != "metrics.csv":
        metrics = opened.read_metrics()
        steps = set(metrics.loc[metrics["split"] == "train", "step"])
        assert steps == set(range(1, STEP + 1)), f"metrics lost steps: {sorted(steps)}"


def _check_listing(run: Path, relative: str, mode: str) -> None:
    store = run_store(run.parent)
    infos = {info.name: info for info in store.list()}
    assert run.name in infos, "the damaged run is not listed"
    info = infos[run.name]
    named = Path(relative).name if relative != "checkpoints" else "checkpoints"
    if (FILES.get(relative, True)) and (relative, mode) not in TOLERATED:
        assert info.problem and named in info.problem, f"problem does not name it: {info.problem}"
    if relative in ("summary.json", "owner.json", "metrics.csv") or relative.startswith("checkp"):
        assert info.status is RunStatus.FINISHED and info.config is not None, "run hidden"
    code, out, err = _cli("--run-dir", str(run.parent), "list")
    assert code == 0, f"list exited {code}: {err}"
    assert "Traceback" not in out + err
    row = next((line for line in out.splitlines() if line.startswith(run.name)), None)
    assert row is not None, "list does not show the run"
    if info.problem:
        assert "problem:" in row or "unreadable" in row
    if relative == "metrics.csv" and mode in ("symlink", "folder", "huge"):
        with pytest.raises(runs.RunFileError, match="metrics.csv"):
            store.open(run.name).read_metrics()


def test_each_run_file_damaged_lists_with_its_problem(trained, tmp_path):
    tally = _Tally("run files damaged, list")
    for relative, mode, run in _damaged_runs(trained, tmp_path):
        with tally.case(f"{relative} {mode}"):
            _check_listing(run, relative, mode)
            _nothing_lost(run, relative)
        shutil.rmtree(run)
    tally.report()


@pytest.mark.slow  # ~2 s per evaluate, ~65 cases
def test_each_run_file_damaged_evaluate_is_one_line_or_works(trained, tmp_path):
    tally = _Tally("run files damaged, evaluate")
    exits = {0: 0, 2: 0}
    saved = _one_thread()
    try:
        for relative, mode, run in _damaged_runs(trained, tmp_path):
            with tally.case(f"{relative} {mode}"):
                code, out, err = _cli("--run-dir", str(run.parent), "evaluate", run.name)
                assert code in (0, 2), f"evaluate exited {code}: {err[-500:]}"
                exits[code] += 1
                assert "Traceback" not in out + err, err[-2000:]
                named = "checkpoints" if relative == "checkpoints" else Path(relative).name
                if code == 2:
                    errors = [line for line in err.splitlines() if line.startswith("error:")]
                    assert len(errors) == 1, err
                    assert named in errors[0] or "checkpoint" in errors[0], errors[0]
                else:
                    assert "MI in nats" in out, out
                    must = relative in ("config.json",) or (
                        relative.startswith(CKPT) and mode != "symlink"
                    )
                    assert not must, f"evaluate worked on a damaged {relative}"
                if FILES.get(relative) and (relative, mode) not in TOLERATED:
                    assert named in err, f"evaluate does not name {named}: {err[-300:]}"
                _nothing_lost(run, relative)
            shutil.rmtree(run)
    finally:
        torch.set_num_threads(saved)
    print(f"evaluate exits: {exits[0]} worked, {exits[2]} refused in one line")
    tally.report()


# --- two processes on one run ----------------------------------------------------------------

_HOLDER = r"""
import sys, time
from mist_core.runs import RunStore
run = RunStore(sys.argv[1]).open(sys.argv[2])
writer = run.acquire_writer()
run.set_status("running", "another process trains this run")
print("locked", flush=True)
time.sleep(600)
"""


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _hold(root: Path, name: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root), name],
        stdout=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    assert process.stdout.readline().strip() == "locked", "the holder did not take the lock"
    return process


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()


@pytest.mark.slow  # three interpreters import torch; one resume evaluates
def test_two_processes_on_one_run_and_kill_9_of_the_holder(trained, tmp_path):
    tally = _Tally("two processes on one run")
    root = tmp_path / "runs"
    root.mkdir()
    resumed, deleted = _copy(trained, root, "resumed"), _copy(trained, root, "deleted")
    store = run_store(root)
    holders = [_hold(root, "resumed"), _hold(root, "deleted")]
    try:
        pid = holders[0].pid
        with tally.case("list shows the live owner"):
            info = store.info("resumed")
            assert info.status is RunStatus.RUNNING and info.owner["pid"] == pid, info
            code, out, _ = _cli("--run-dir", str(root), "list")
            assert code == 0 and f"process {pid}" in out, out
        with tally.case("a second writer in this process is refused"):
            with pytest.raises(RunBusyError, match=f"being trained by process {pid} on "):
                store.open("resumed").acquire_writer()
        with tally.case("delete of a live run is refused"):
            with pytest.raises(RunBusyError):
                store.delete("resumed")
        with tally.case("resume in another process is refused in one line"):
            done = subprocess.run(
                [sys.executable, "-m", "mist_core", "resume", str(resumed)],
                capture_output=True,
                text=True,
                timeout=300,
                env=_env(),
                cwd=tmp_path,
            )
            assert done.returncode == 2, done.stderr[-2000:]
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
            assert lines[0].startswith(f"error: run 'resumed' is being trained by process {pid}")
            assert "stop it there first" in lines[0]
        with tally.case("resume in this process is refused in one line"):
            code, _, err = _cli("--run-dir", str(root), "resume", "resumed")
            assert code == 2 and err.count("error:") == 1 and str(pid) in err, err

        for holder in holders:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
        with tally.case("after kill -9 the runs list as interrupted"):
            infos = {info.name: info for info in store.list()}
            for name in ("resumed", "deleted"):
                assert infos[name].status is RunStatus.INTERRUPTED, infos[name]
                assert infos[name].owner is None and infos[name].problem is None
            code, out, _ = _cli("--run-dir", str(root), "list")
            assert code == 0 and out.count("interrupted") == 2, out
        with tally.case("an interrupted run is deleted without force"):
            store.delete("deleted")
            assert not deleted.exists()
        with tally.case("an interrupted run resumes to the end"):
            saved = _one_thread()
            try:
                code, out, err = _cli("--run-dir", str(root), "resume", str(resumed))
            finally:
                torch.set_num_threads(saved)
            assert code == 0, err[-2000:]
            assert "run resumed: finished" in out and "MI in nats" in out, out
            assert store.info("resumed").status is RunStatus.FINISHED
            assert store.open("resumed").load_checkpoint().step == STEP
    finally:
        for holder in holders:
            _kill(holder)
    tally.report()


def test_create_never_shows_a_half_made_run(tmp_path):
    """Many creations while another thread lists: never a run without config or status."""
    import threading

    store = run_store(tmp_path / "runs")
    config = preset("demo-cpu", **TINY)
    stop = threading.Event()
    seen: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            for info in store.list():
                if info.problem:
                    seen.append(f"{info.name}: {info.problem}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    tally = _Tally("creations watched by a lister")
    try:
        for i in range(60):
            with tally.case(f"create {i}"):
                run = store.create(config, acquire=i % 2 == 0)
                if run.writer is not None:
                    assert store.info(run.name).status is RunStatus.QUEUED
                    run.writer.release()
    finally:
        stop.set()
        watcher.join()
    with tally.case("no half-made run listed"):
        assert not seen, seen[:5]
    tally.report()
