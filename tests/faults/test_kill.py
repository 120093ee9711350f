"""kill -9 of a training at random moments: nothing is left running, nothing is lost.

Each case starts ``python -m mist_core train`` in its own session (so every process it makes,
forked face-drawing workers included, carries the session id), SIGKILLs it after a random
delay (during start-up, drawing, training, a checkpoint write or the evaluation), and then
checks:

- no process of that session is left alive a few seconds later (the drawing workers die with
  their parent);
- the run folder, if it was created, lists without a problem; a run that was not finished
  shows as ``interrupted`` (its owner is gone), never as ``running``;
- the last checkpoint, if one was written, loads and verifies, and ``metrics.csv`` holds every
  training step up to it;
- an interrupted run with a checkpoint resumes to the end (checked on the first one).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mist_core.checkpoints import run_store
from mist_core.runs import RunStatus, RunStore

ROOT = Path(__file__).resolve().parents[2]
N_KILLS = 20
#: Small, but big enough that faces are drawn in worker processes (>= 256 images).
CONFIG = [
    "train_size=260",
    "test_size=16",
    "image_size=[40,32]",
    "batch_size=16",
    "epochs=2",
    "valid_fraction=0.0",
]


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train(root: Path, name: str) -> subprocess.Popen:
    sets = [item for change in CONFIG for item in ("--set", change)]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mist_core",
            "--run-dir",
            str(root),
            "train",
            *sets,
            "--name",
            name,
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # session id = its pid, inherited by every process it forks
    )


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is ``sid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def _left_behind(sid: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        members = _session_members(sid)
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.1)


def _check_run(store: RunStore, name: str) -> tuple[str, int | None]:
    """The run's listed status and its checkpoint step, after checking nothing was lost."""
    infos = {info.name: info for info in store.list()}
    if name not in infos:
        return "not created", None
    info = infos[name]
    assert info.problem is None, f"run {name} lists with a problem: {info.problem}"
    assert info.status in (RunStatus.INTERRUPTED, RunStatus.FINISHED), (
        f"run {name} of a killed process lists as {info.status}"
    )
    run = store.open(name)
    step = run.latest_checkpoint_step()
    if step is not None:
        checkpoint = run.load_checkpoint()  # verified against its sha256
        assert checkpoint.step == step
        metrics = run.read_metrics()
        train_steps = set(metrics.loc[metrics["split"] == "train", "step"].tolist())
        missing = sorted(set(range(1, step + 1)) - train_steps)
        assert not missing, f"run {name}: metrics lack training steps {missing[:10]} <= {step}"
    return info.status.value, step


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_nothing_behind_and_loses_nothing(tmp_path):
    store = run_store(tmp_path)
    rng = random.Random(13)

    # one training that is not killed: how long the whole thing takes here
    started = time.monotonic()
    baseline = _train(tmp_path, "baseline")
    _, err = baseline.communicate(timeout=600)
    full = time.monotonic() - started
    assert baseline.returncode == 0, err.decode(errors="replace")[-2000:]
    assert json.loads(store.open("baseline").status_path.read_text())["status"] == "finished"
    shutil.rmtree(tmp_path / "baseline")

    outcomes: dict[str, int] = {}
    left: list[str] = []
    resumed = 0
    for i in range(N_KILLS):
        name = f"kill-{i:02d}"
        delay = rng.uniform(0.2, full * 1.05)
        process = _train(tmp_path, name)
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
        survivors = _left_behind(process.pid)
        if survivors:
            left.append(f"{name}: pids {survivors} alive after the kill at {delay:.1f} s")
            for pid in survivors:  # do not leave them to the next case
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        status, step = _check_run(store, name)
        key = f"{status}, {'checkpoint' if step is not None else 'no checkpoint'}"
        outcomes[key] = outcomes.get(key, 0) + 1
        if status == "interrupted" and step is not None and resumed < 1:
            result = subprocess.run(
                [sys.executable, "-m", "mist_core", "--run-dir", str(tmp_path), "resume", name],
                cwd=ROOT,
                env=_env(),
                capture_output=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
            assert store.open(name).status() is RunStatus.FINISHED
            resumed += 1
        shutil.rmtree(tmp_path / name, ignore_errors=True)  # ~430 MB of checkpoints a run

    print(
        f"\nkill -9 at random moments (0.2-{full * 1.05:.0f} s; a whole run takes {full:.0f} s): "
        f"{N_KILLS} tried, {N_KILLS - len(left)} left no process behind; outcomes {outcomes}; "
        f"{resumed} interrupted runs resumed to the end"
    )
    assert not left, "processes left behind:\n" + "\n".join(left)
