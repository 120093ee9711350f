"""Issue 13, item 14: killing a training leaves no face-drawing worker process behind.

A training process is preparing a large drawn-face config (its images are drawn in forked
worker processes) when it gets SIGKILL, SIGTERM (with the CLI's graceful-stop handler, which
the workers must not inherit, and without it) or SIGINT, at a random moment. Every process
of its tree, recorded from /proc just before the signal, must be gone within a few seconds.

To keep each case quick, the training processes are forked from one helper process that has
imported mist_core once (a zygote); each case is still a real process with real workers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

REPO = Path(__file__).resolve().parents[2]
CASES_PER_SIGNAL = int(os.environ.get("MIST_FAULT_N", "10"))

ZYGOTE = r"""
import ctypes, os, signal, sys
from mist_core.experiment import LandmarkExperiment, preset


def die_with_parent():  # so that nothing is left if the test itself is killed
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


die_with_parent()
# Ctrl-C in a terminal raises KeyboardInterrupt. A process started in the background by a
# non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored: the
# cases would outlive SIGINT for that reason alone, so the handler is put back.
signal.signal(signal.SIGINT, signal.default_int_handler)

CONFIG = preset("demo-cpu", train_size=200_000, test_size=500, image_size=(64, 52))


def train(mode):
    if mode == "term-cli":  # the CLI's graceful stop: SIGTERM raises KeyboardInterrupt
        try:
            from mist_core.cli import stop_on_sigterm
        except ImportError:
            def stop_on_sigterm():
                def handler(signum, frame):
                    raise KeyboardInterrupt
                signal.signal(signal.SIGTERM, handler)
        stop_on_sigterm()
    experiment = LandmarkExperiment(CONFIG)
    print("drawing", os.getpid(), flush=True)
    experiment.datasets()


for line in sys.stdin:
    while True:  # reap the cases that are over
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    pid = os.fork()
    if pid == 0:
        die_with_parent()
        code = 0
        try:
            train(line.strip())
        except BaseException:
            code = 1
        os._exit(code)
    print("case", pid, flush=True)
"""


def _process_table() -> dict[int, tuple[int, str, str]]:
    """``{pid: (ppid, state, start time)}`` of every process (from /proc/*/stat)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), fields[0], fields[19])
    return table


def _tree(root: int) -> dict[int, str]:
    """``{pid: start time}`` of ``root`` and all its descendants alive now."""
    table = _process_table()
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and table[pid][1] not in "ZX":
            found[pid] = table[pid][2]
            todo.extend(p for p, (ppid, _, _) in table.items() if ppid == pid)
    return found


def _alive(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` (pid: start time) that still run (zombies count as gone)."""
    table = _process_table()
    return [
        pid
        for pid, started in processes.items()
        if pid in table and table[pid][2] == started and table[pid][1] not in "ZX"
    ]


@pytest.fixture(scope="module")
def zygote():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    yield process
    process.stdin.close()
    process.wait(timeout=30)


def _line(zygote: subprocess.Popen, word: str, pid: int | None = None) -> int:
    """The pid of the next ``word PID`` line (lines of earlier cases are skipped)."""
    while True:
        line = zygote.stdout.readline()
        if not line:
            raise RuntimeError("the helper process ended")
        said, _, number = line.partition(" ")
        if said == word and (pid is None or int(number) == pid):
            return int(number)


def _case(zygote: subprocess.Popen, mode: str, signum: int, rng: random.Random) -> dict:
    zygote.stdin.write(mode + "\n")
    zygote.stdin.flush()
    pid = _line(zygote, "case")
    moment = rng.random()
    if moment < 0.2:  # while the experiment is being built, before any worker
        time.sleep(rng.uniform(0.0, 0.5))
    elif moment < 0.4:  # as the drawing starts: the pool is being made
        _line(zygote, "drawing", pid)
        time.sleep(rng.uniform(0.0, 0.3))
    else:  # while the workers draw (and this process resizes between chunks)
        _line(zygote, "drawing", pid)
        deadline = time.monotonic() + 30
        while len(_tree(pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.0))
    processes = _tree(pid)
    os.kill(pid, signum)
    start = time.monotonic()
    left = _alive(processes)
    while left and time.monotonic() - start < 5.0:
        time.sleep(0.05)
        left = _alive(processes)
    return {
        "workers": len(processes) - 1,
        "left": left,
        "seconds": round(time.monotonic() - start, 2),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "signum"),
    [
        ("kill", signal.SIGKILL),
        ("term", signal.SIGTERM),
        ("term-cli", signal.SIGTERM),
        ("int", signal.SIGINT),
    ],
)
def test_no_worker_outlives_a_killed_training(zygote, mode, signum):
    rng = random.Random(f"{mode}-{os.getpid()}")
    results = [_case(zygote, mode, signum, rng) for _ in range(CASES_PER_SIGNAL)]
    held = [r for r in results if not r["left"]]
    with_workers = sum(r["workers"] > 0 for r in results)
    slowest = max(r["seconds"] for r in results)
    summary = (
        f"{signal.Signals(signum).name} ({mode}): tried {len(results)}, held {len(held)} "
        f"({with_workers} with worker processes running at the signal; slowest clean-up "
        f"{slowest:.2f} s)"
    )
    print(summary)
    assert len(held) == len(results), f"{summary}; left behind: {results}"
    assert with_workers >= len(results) // 3, f"too few cases hit the drawing: {summary}"
