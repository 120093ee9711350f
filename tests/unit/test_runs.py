"""Run directories: names, statuses, metrics, checkpoints, kills and hostile files."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mist_core.checkpoints import run_store
from mist_core.experiment import preset
from mist_core.runs import (
    Checkpoint,
    CorruptCheckpointError,
    Run,
    RunBusyError,
    RunFileError,
    RunInfo,
    RunNotes,
    RunStatus,
    RunStore,
)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
CONFIG = preset("demo-cpu", epochs=2, landmarks=["nose"])


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return run_store(tmp_path / "runs")


def _rewrite_meta(run: Run, step: int, **changes) -> None:
    path = run.checkpoint_dir / f"step-{step:08d}.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        meta[key] = value
    path.write_text(json.dumps(meta))


def _fix_hash(run: Run, step: int, kind: str) -> None:
    """Make the JSON agree with the file on disk, so loading gets past the hash check."""
    path = run.checkpoint_dir / f"step-{step:08d}.json"
    meta = json.loads(path.read_text())
    data = (run.checkpoint_dir / meta["files"][kind]).read_bytes()
    meta["sha256"][kind] = hashlib.sha256(data).hexdigest()
    meta["bytes"][kind] = len(data)
    path.write_text(json.dumps(meta))


def _row(encoder: str, landmark: str, mi: float, std_error: float = 0.1) -> dict:
    return {"encoder": encoder, "landmark": landmark, "mi": mi, "std_error": std_error}


# --- store, names, statuses -----------------------------------------------------------------


def test_create_open_list_round_trip(store):
    assert store.list() == [], "a missing root is an empty store"
    run = store.create(CONFIG, name="first")
    assert run.name == "first" and run.path == store.root / "first"
    assert run.config() == CONFIG
    assert run.status() is RunStatus.QUEUED
    time.sleep(0.01)
    second = store.create(CONFIG.replace(seed=3), name="second")

    opened = store.open("first")
    assert opened.config() == CONFIG and opened.status() == "queued"
    run.set_status(RunStatus.RUNNING, message="epoch 1")
    run.set_status("failed", message="boom", traceback="Traceback ...")
    info = store.open("first").status_info()
    assert info["status"] == "failed" and info["message"] == "boom"
    assert info["traceback"] == "Traceback ..." and info["updated"] >= info["created"]

    summary = {"mi": [_row("trained", "nose", 1.25)], "best_step": 7}
    run.write_summary(summary)
    assert run.summary() == summary
    assert second.summary() is None
    run.append_metrics([(3, 0, "train", "loss", 0.5), (7, 1, "valid", "loss", 0.25)])

    infos = store.list()
    assert [i.name for i in infos] == ["second", "first"], "newest first"
    first = infos[1]
    assert isinstance(first, RunInfo) and first.problem is None
    assert first.status is RunStatus.FAILED and first.config == CONFIG
    assert first.summary == summary and first.last_step == 7
    assert infos[0].config.seed == 3 and infos[0].last_step is None
    # created, never owned: its recorded "queued" has no live process behind it
    assert second.status() is RunStatus.QUEUED
    assert infos[0].status is RunStatus.INTERRUPTED and infos[0].owner is None
    assert infos[0].created >= first.created

    with pytest.raises(FileExistsError):
        store.create(CONFIG, name="first")
    with pytest.raises(FileNotFoundError, match="first"):
        store.open("nope")
    with pytest.raises(ValueError):
        run.set_status("exploded")

    store.delete("second")
    assert [i.name for i in store.list()] == ["first"]
    run.set_status(RunStatus.RUNNING)
    assert store.list()[0].status is RunStatus.INTERRUPTED, "no process owns it"
    with run.acquire_writer():
        assert store.list()[0].status is RunStatus.RUNNING
        with pytest.raises(RunBusyError, match="being trained by this process"):
            store.delete("first")
        with pytest.raises(RuntimeError):  # RunBusyError is a RuntimeError
            store.delete("first")
        store.delete("first", force=True)
    assert store.list() == []


def test_default_names_are_unique_and_timestamped(store):
    names = {store.create(CONFIG).name for _ in range(5)}
    assert len(names) == 5
    for name in names:
        date, clock, suffix = name.split("-")
        assert len(date) == 8 and len(clock) == 6 and date.isdigit() and clock.isdigit()
        int(suffix, 16)


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "/etc", "..", ".", "", ".hidden", "a\\b", "x" * 101, "a b", "é", "a\0b"],
)
def test_escaping_and_invalid_names_are_refused(store, name):
    with pytest.raises(ValueError):
        store.create(CONFIG, name=name)
    with pytest.raises(ValueError):
        store.open(name)
    with pytest.raises(ValueError):
        store.delete(name)
    assert not (store.root.parent / "x").exists() and not (store.root / "a").exists()


def test_symlink_out_of_root_is_not_followed(store, tmp_path):
    store.create(CONFIG, name="valid")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(CONFIG.to_json())
    (store.root / "evil").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ValueError, match="outside|symlink"):
        store.open("evil")
    with pytest.raises((ValueError, FileExistsError)):
        store.create(CONFIG, name="evil")
    infos = {i.name: i for i in store.list()}
    assert infos["evil"].status is None and "symlink" in infos["evil"].problem
    assert infos["valid"].problem is None
    store.delete("evil")  # removes the link only
    assert outside.is_dir() and (outside / "config.json").exists()


def test_list_tolerates_corrupt_entries(store, caplog):
    store.create(CONFIG, name="good")
    (store.root / "no-config").mkdir()
    bad_json = store.root / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    bad_field = store.root / "bad-field"
    bad_field.mkdir()
    (bad_field / "config.json").write_text(json.dumps({"dataset": "mnist"}))
    bad_status = store.create(CONFIG, name="bad-status")
    bad_status.status_path.write_text('{"status": "dancing"}')
    torn_status = store.create(CONFIG, name="torn-status")
    torn_status.status_path.write_bytes(b'{"stat')
    (store.root / "notes.txt").write_text("not a run")
    (store.root / "garbage.bin").write_bytes(os.urandom(64))
    bad_summary = store.create(CONFIG, name="bad-summary")
    bad_summary.summary_path.write_text("[1, 2")

    with caplog.at_level(logging.WARNING, logger="mist_core.runs"):
        infos = {i.name: i for i in store.list()}
    assert set(infos) == {
        "good",
        "no-config",
        "bad-json",
        "bad-field",
        "bad-status",
        "torn-status",
        "notes.txt",
        "garbage.bin",
        "bad-summary",
    }
    # created and never owned by a process: "queued" on disk, interrupted in a list
    assert infos["good"].problem is None and infos["good"].status is RunStatus.INTERRUPTED
    for name in ("no-config", "bad-json", "bad-field", "bad-status", "torn-status"):
        assert infos[name].status is None, name
        assert infos[name].problem, name
    assert "config.json" in infos["no-config"].problem
    assert "status.json" in infos["bad-status"].problem
    for name in ("notes.txt", "garbage.bin"):
        assert infos[name].status is None and "not a run directory" in infos[name].problem
    assert "summary.json" in infos["bad-summary"].problem
    assert infos["bad-summary"].status is RunStatus.INTERRUPTED
    assert infos["bad-summary"].config == CONFIG, "the rest of a run with a bad summary shows"
    assert "no-config" in caplog.text, "broken entries are logged"


# --- metrics ------------------------------------------------------------------------------------


def _expected(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["step", "epoch", "split", "name", "value"])
    return frame.astype({"step": "int64", "epoch": "int64", "value": "float64"})


def _assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == ["step", "epoch", "split", "name", "value"]
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False
    )
    assert actual["step"].dtype == "int64" and actual["value"].dtype == "float64"


def test_metrics_round_trip(store):
    run = store.create(CONFIG, name="m")
    empty = run.read_metrics()
    assert empty.empty and list(empty.columns) == ["step", "epoch", "split", "name", "value"]

    frame_rows = [(1, 0, "train", "loss", 1.5), (1, 0, "train", "I(a;nose)", 0.1 + 0.2)]
    run.append_metrics(_expected(frame_rows))
    tuple_rows = [(2, 0, "valid", 'odd, "name"', -3e-12), (3, 1, "train", "nan", float("nan"))]
    run.append_metrics(iter(tuple_rows))
    run.append_metrics([])
    _assert_same(run.read_metrics(), _expected(frame_rows + tuple_rows))
    assert run.metrics_path.read_text().startswith("step,epoch,split,name,value\n")
    assert run.metrics_path.read_text().count("step,epoch") == 1, "one header"

    with pytest.raises(ValueError):
        run.append_metrics([(1, 2, 3)])
    with pytest.raises(ValueError):
        run.append_metrics(pd.DataFrame({"step": [1]}))


def test_metrics_torn_last_line(store):
    run = store.create(CONFIG, name="torn")
    rows = [(i, 0, "train", "loss", 1.0 / (i + 1)) for i in range(5)]
    run.append_metrics(rows)
    with open(run.metrics_path, "ab") as f:
        f.write(b"5,0,tra")  # killed mid-write: no newline
    _assert_same(run.read_metrics(), _expected(rows))
    with open(run.metrics_path, "ab") as f:
        f.write(b"\xff\xfe garbage")
    _assert_same(run.read_metrics(), _expected(rows))
    assert store.list()[0].last_step == 4

    # the next append cuts the torn tail instead of gluing a row onto it
    run.append_metrics([(5, 0, "train", "loss", 0.5)])
    _assert_same(run.read_metrics(), _expected(rows + [(5, 0, "train", "loss", 0.5)]))

    # a file that is nothing but a torn header
    other = store.create(CONFIG, name="torn-header")
    other.metrics_path.write_bytes(b"step,ep")
    assert other.read_metrics().empty
    other.append_metrics([(0, 0, "train", "loss", 2.0)])
    _assert_same(other.read_metrics(), _expected([(0, 0, "train", "loss", 2.0)]))


def test_truncate_metrics(store):
    run = store.create(CONFIG, name="resume")
    rows = [
        (s, s // 3, split, "loss", float(s)) for s in range(10) for split in ("train", "valid")
    ]
    run.append_metrics(rows)
    run.truncate_metrics(after_step=4)
    metrics = run.read_metrics()
    assert metrics["step"].max() == 4 and len(metrics) == 10
    run.append_metrics([(5, 1, "train", "loss", 5.0)])
    assert run.read_metrics()["step"].value_counts().max() == 2, "no duplicated rows"
    run.truncate_metrics(after_step=-1)
    assert run.read_metrics().empty
    store.create(CONFIG, name="fresh").truncate_metrics(3)  # nothing to truncate


# --- checkpoints ----------------------------------------------------------------------------


def _trained_linear() -> tuple[torch.nn.Linear, torch.optim.Adam]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip(store):
    run = store.create(CONFIG, name="ckpt")
    assert not run.has_checkpoint()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.load_checkpoint()
    model, optimizer = _trained_linear()
    meta_path = run.save_checkpoint(
        model.state_dict(),
        step=12,
        epoch=1,
        optimizer_state=optimizer.state_dict(),
        extra={"best_valid": 0.5},
    )
    assert meta_path == run.checkpoint_dir / "step-00000012.json"
    assert run.has_checkpoint()
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == [
        "latest.json",
        "step-00000012.json",
        "step-00000012.optim.pt",
        "step-00000012.safetensors",
    ]
    assert json.loads((run.checkpoint_dir / "latest.json").read_text())["step"] == 12

    checkpoint = store.open("ckpt").load_checkpoint()
    assert isinstance(checkpoint, Checkpoint)
    assert (checkpoint.step, checkpoint.epoch, checkpoint.extra) == (12, 1, {"best_valid": 0.5})
    fresh = torch.nn.Linear(4, 3)
    fresh.load_state_dict(checkpoint.model_state)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)

    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_optimizer.load_state_dict(checkpoint.optimizer_state)
    expected, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert loaded["param_groups"] == expected["param_groups"]
    for index, state in expected["state"].items():
        for key, value in state.items():
            assert torch.equal(loaded["state"][index][key], value), key
    assert run.load_checkpoint(12).step == 12 and run.load_checkpoint("12").step == 12
    with pytest.raises(FileNotFoundError):
        run.load_checkpoint(13)
    with pytest.raises(ValueError):
        run.load_checkpoint("best")


def test_checkpoint_without_optimizer_and_shared_tensors(store):
    run = store.create(CONFIG, name="tied")
    embedding = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = embedding.weight  # tied weights: two keys, one storage
    model = torch.nn.ModuleDict({"embedding": embedding, "head": head})
    state = model.state_dict()
    state["view"] = embedding.weight.detach()[1:3]  # a non-contiguous slice of the same storage
    state["transposed"] = embedding.weight.detach().t()
    run.save_checkpoint(state, step=0, epoch=0)
    loaded = run.load_checkpoint()
    assert loaded.optimizer_state is None
    for key, value in state.items():
        assert torch.equal(loaded.model_state[key], value), key
    model.load_state_dict({k: v for k, v in loaded.model_state.items() if "." in k})
    with pytest.raises(TypeError):
        run.save_checkpoint({"w": [1, 2]}, step=1, epoch=0)
    with pytest.raises(ValueError):
        run.save_checkpoint(state, step=-1, epoch=0)


def test_keep_checkpoints_prunes(store):
    run = store.create(CONFIG, name="prune")
    run.keep_checkpoints = 2
    for step in range(5):
        run.save_checkpoint({"w": torch.full((3,), float(step))}, step=step * 10, epoch=step)
    assert [p.name for p in sorted(run.checkpoint_dir.glob("step-*"))] == [
        "step-00000030.json",
        "step-00000030.safetensors",
        "step-00000040.json",
        "step-00000040.safetensors",
    ]
    # resumed from an older step: the one latest points to is never pruned
    run.save_checkpoint({"w": torch.zeros(3)}, step=20, epoch=2)
    assert run.load_checkpoint().step == 20
    assert (run.checkpoint_dir / "step-00000020.safetensors").exists()
    # re-saving the step latest points to
    run.save_checkpoint({"w": torch.ones(3)}, step=20, epoch=2, optimizer_state={"x": 1})
    assert torch.equal(run.load_checkpoint().model_state["w"], torch.ones(3))


def test_corrupted_file_is_detected(store):
    run = store.create(CONFIG, name="corrupt")
    model, optimizer = _trained_linear()
    run.save_checkpoint(
        model.state_dict(), step=1, epoch=0, optimizer_state=optimizer.state_dict()
    )
    path = run.checkpoint_dir / "step-00000001.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="step-00000001.safetensors"):
        run.load_checkpoint()

    optim = run.checkpoint_dir / "step-00000001.optim.pt"
    run.save_checkpoint(
        model.state_dict(), step=2, epoch=0, optimizer_state=optimizer.state_dict()
    )
    (run.checkpoint_dir / "step-00000002.optim.pt").write_bytes(optim.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpointError, match="step-00000002.optim.pt"):
        run.load_checkpoint()
    (run.checkpoint_dir / "step-00000002.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match="missing"):
        run.load_checkpoint(2)


@pytest.mark.parametrize("damage", ["delete", "garble", "empty", "wrong-step", "not-object"])
def test_latest_pointer_damage_falls_back(store, damage):
    run = store.create(CONFIG, name="fallback")
    for step in (1, 2, 3):
        run.save_checkpoint({"w": torch.full((2,), float(step))}, step=step, epoch=0)
    # the newest one is broken, so the fallback must verify hashes and take step 2
    broken = run.checkpoint_dir / "step-00000003.safetensors"
    broken.write_bytes(broken.read_bytes()[:-1] + b"!")
    latest = run.checkpoint_dir / "latest.json"
    if damage == "delete":
        latest.unlink()
    elif damage == "garble":
        latest.write_bytes(b'{"step": 3, "fi')
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "wrong-step":
        latest.write_text(json.dumps({"step": 99, "files": {}}))
    else:
        latest.write_text("[3]")
    checkpoint = run.load_checkpoint()
    assert checkpoint.step == 2 and torch.equal(checkpoint.model_state["w"], torch.full((2,), 2.0))
    for step in (1, 2):
        (run.checkpoint_dir / f"step-{step:08d}.json").write_text("{")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        run.load_checkpoint()


# --- hostile files ------------------------------------------------------------------------------


class _Evil:
    """Unpickling this creates ``marker``: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_optimizer_pickle_is_refused(store, tmp_path):
    payload_check = tmp_path / "payload-works"
    pickle.loads(pickle.dumps(_Evil(payload_check)))
    assert payload_check.exists(), "the payload really runs code under plain pickle"

    marker = tmp_path / "pwned"
    run = store.create(CONFIG, name="evil")
    model, optimizer = _trained_linear()
    run.save_checkpoint(
        model.state_dict(), step=5, epoch=0, optimizer_state=optimizer.state_dict()
    )
    (run.checkpoint_dir / "step-00000005.optim.pt").write_bytes(pickle.dumps(_Evil(marker)))
    _fix_hash(run, 5, "optimizer")
    with pytest.raises(CorruptCheckpointError, match="refusing to load"):
        run.load_checkpoint()
    assert not marker.exists()

    # the same payload inside torch.save's zip format
    torch.save({"state": _Evil(marker)}, run.checkpoint_dir / "step-00000005.optim.pt")
    _fix_hash(run, 5, "optimizer")
    with pytest.raises(CorruptCheckpointError, match="refusing to load"):
        run.load_checkpoint()
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickled_model_file_is_never_unpickled(store, tmp_path):
    marker = tmp_path / "pwned"
    run = store.create(CONFIG, name="evil-model")
    run.save_checkpoint({"w": torch.ones(2)}, step=7, epoch=0)
    model_path = run.checkpoint_dir / "step-00000007.safetensors"

    # a .pt (pickle) file in place of the safetensors file, hash fixed
    torch.save({"w": torch.ones(2), "evil": _Evil(marker)}, model_path)
    _fix_hash(run, 7, "model")
    with pytest.raises(CorruptCheckpointError, match="safetensors"):
        run.load_checkpoint()
    model_path.write_bytes(pickle.dumps(_Evil(marker)))
    _fix_hash(run, 7, "model")
    with pytest.raises(CorruptCheckpointError, match="safetensors"):
        run.load_checkpoint()

    # a JSON that points the model at a .pt file (or outside the folder) is refused
    pt_path = run.checkpoint_dir / "step-00000007.pt"
    pt_path.write_bytes(pickle.dumps(_Evil(marker)))
    digest = hashlib.sha256(pt_path.read_bytes()).hexdigest()
    for target in ("step-00000007.pt", "../../evil.pt", str(pt_path)):
        _rewrite_meta(run, 7, files={"model": target, "optimizer": None}, sha256={"model": digest})
        with pytest.raises(CorruptCheckpointError, match="not a valid checkpoint"):
            run.load_checkpoint()
    assert not marker.exists()


# --- kill test ----------------------------------------------------------------------------------

# One interpreter imports mist_core.runs once (that is the slow part) and forks a writer per
# round; each writer saves checkpoints of a few MB in a loop until it is SIGKILLed.
_WRITER = r"""
import os, sys
import torch
torch.set_num_threads(1)
from pathlib import Path
from mist_core.runs import Run

run = Run(Path(sys.argv[1]), keep_checkpoints=3)
parent = os.getpid()
for line in sys.stdin:
    base = int(line)
    pid = os.fork()
    if pid == 0:
        try:
            weight = torch.randn(768, 1024, generator=torch.Generator().manual_seed(base))
            step = base
            while os.getppid() == parent:
                step += 1
                weight[0, 0] = step
                run.save_checkpoint(
                    {"weight": weight, "tied": weight, "bias": torch.full((64,), float(step))},
                    step=step,
                    epoch=step // 10,
                    optimizer_state={"state": {0: {"exp_avg": weight[:64] * 0.5}},
                                     "param_groups": [{"lr": 0.1, "params": [0]}]},
                    extra={"step": step},
                )
        finally:
            os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
"""


def _wait_for_steps(run: Run, above: int, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [s for s in run._checkpoint_steps() if s > above]
        if len(steps) >= count:
            return
        time.sleep(0.005)
    raise AssertionError(f"the writer saved fewer than {count} checkpoints in {timeout} s")


@pytest.mark.slow  # about 1 s of kills, plus the writer's import of mist_core (torch)
def test_sigkill_never_leaves_a_broken_latest(store):
    run = store.create(CONFIG, name="killed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(run.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    rng = random.Random(1234)
    children = []
    try:
        for round_ in range(4):
            base = (round_ + 1) * 1000
            process.stdin.write(f"{base}\n")
            process.stdin.flush()
            child = int(process.stdout.readline())
            children.append(child)
            _wait_for_steps(run, base, 2)
            time.sleep(rng.uniform(0.0, 0.15))
            os.kill(child, signal.SIGKILL)
            time.sleep(0.05)  # let the kernel reap the writer before we read

            checkpoint = run.load_checkpoint()
            step = checkpoint.step
            assert step > base and checkpoint.extra == {"step": step}
            assert checkpoint.model_state["weight"][0, 0].item() == step
            assert torch.equal(checkpoint.model_state["tied"], checkpoint.model_state["weight"])
            assert checkpoint.model_state["bias"][0].item() == step
            assert checkpoint.optimizer_state["param_groups"][0]["lr"] == 0.1
            pointer = json.loads((run.checkpoint_dir / "latest.json").read_text())
            assert pointer["step"] == step, "latest.json itself is intact and complete"
            assert len(run._checkpoint_steps()) <= 3 + 2, "pruning keeps up"
    finally:
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def test_checkpoint_of_a_view_saves_only_the_view(store):
    run = store.create(CONFIG, name="view")
    big = torch.arange(10.0)
    run.save_checkpoint({"part": big[2:5], "whole": torch.ones(3)}, step=1, epoch=0)
    state = run.load_checkpoint().model_state
    assert torch.equal(state["part"], torch.tensor([2.0, 3.0, 4.0]))
    assert torch.equal(state["whole"], torch.ones(3))


# --- owner, writer lock, interrupted runs (issue 13: items 4 and 5) -------------------------

# A process that takes a run's writer lock, marks it running, says "locked" and waits.
_HOLDER = r"""
import sys, time
from mist_core.runs import RunStore
run = RunStore(sys.argv[1]).open(sys.argv[2])
writer = run.acquire_writer()
run.set_status("running", "holding the lock")
print("locked", flush=True)
time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 600)
"""


def _holder(store: RunStore, name: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(store.root), name, *extra],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    line = process.stdout.readline()
    assert line.strip() == "locked", f"the holder did not start: {line!r}"
    return process


def test_writer_lock_owner_and_heartbeat(store, monkeypatch):
    from mist_core.runs import lock

    run = store.create(CONFIG, name="owned")
    assert run.owner() is None and run.writer is None
    assert run.effective_status() is RunStatus.INTERRUPTED, "queued with no owner"
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    with run.acquire_writer() as writer:
        assert run.writer is writer and writer.held
        owner = run.owner()
        assert owner["pid"] == os.getpid() and owner["host"] == lock._HOST
        assert owner["started"] <= owner["heartbeat"] <= time.time()
        assert json.loads(run.owner_path.read_text())["pid"] == os.getpid()
        assert run.effective_status() is RunStatus.QUEUED
        run.set_status(RunStatus.RUNNING)
        assert run.effective_status() is RunStatus.RUNNING
        info = store.list()[0]
        assert info.status is RunStatus.RUNNING and info.owner["pid"] == os.getpid()
        first = json.loads(run.owner_path.read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads(run.owner_path.read_text())["heartbeat"] > first, "heartbeat"

        # one writer: another Run object of this process, and the same one, are refused
        with pytest.raises(RunBusyError, match=r"being trained by this process since") as busy:
            store.open("owned").acquire_writer()
        assert busy.value.owner["pid"] == os.getpid()
        with pytest.raises(RunBusyError):
            run.acquire_writer()
        with pytest.raises(RunBusyError):
            store.open("owned").check_not_busy()
        run.check_not_busy()  # the holder itself may go on
    assert not writer.held and run.writer is None
    writer.release()  # idempotent
    assert not run.owner_path.exists(), "owner.json goes with the lock"
    assert run.owner() is None and run.effective_status() is RunStatus.INTERRUPTED
    assert store.list()[0].status is RunStatus.INTERRUPTED
    with store.open("owned").acquire_writer():  # free again
        pass
    run.set_status(RunStatus.FINISHED)
    assert run.effective_status() is RunStatus.FINISHED, "ended runs need no owner"


def test_create_with_acquire_is_owned_from_its_first_appearance(store):
    run = store.create(CONFIG, name="mine", acquire=True)
    try:
        assert run.writer is not None and run.writer.run is run
        assert (run.path / ".lock").is_file() and run.owner()["pid"] == os.getpid()
        info = store.list()[0]
        assert info.status is RunStatus.QUEUED and info.problem is None
        with pytest.raises(RunBusyError):
            store.open("mine").acquire_writer()
        run.set_status(RunStatus.RUNNING)  # heartbeat and status in the final folder
        assert store.open("mine").effective_status() is RunStatus.RUNNING
    finally:
        run.writer.release()
    assert [p.name for p in store.root.iterdir()] == ["mine"], "no staging folder left"
    default = store.create(CONFIG, acquire=True)
    default.writer.release()
    assert default.name != "mine" and store.open(default.name).config() == CONFIG


def test_runs_without_owner_files_from_before_locks(store):
    """A run written before owners existed: no .lock, no owner.json."""
    for name, status in (("old-running", "running"), ("old-stopping", "stopping")):
        run = store.create(CONFIG, name=name)
        run.set_status(status)
        assert not (run.path / ".lock").exists() and not run.owner_path.exists()
        assert run.effective_status() is RunStatus.INTERRUPTED
        store.delete(name)  # deletable without force
    old = store.create(CONFIG, name="old-finished")
    old.set_status("finished")
    assert store.list()[0].status is RunStatus.FINISHED


def test_owner_on_another_host_goes_by_heartbeat(store):
    run = store.create(CONFIG, name="remote")
    run.set_status(RunStatus.RUNNING)
    now = time.time()
    owner = {"pid": 1234, "host": "elsewhere.example", "started": now - 100}
    run.owner_path.write_text(json.dumps(owner | {"heartbeat": now - 2}))
    assert run.effective_status() is RunStatus.RUNNING, "a fresh heartbeat: alive"
    assert run.owner()["host"] == "elsewhere.example"
    with pytest.raises(RunBusyError, match="process 1234 on elsewhere.example"):
        store.delete("remote")
    run.owner_path.write_text(json.dumps(owner | {"heartbeat": now - 3600}))
    assert run.effective_status() is RunStatus.INTERRUPTED and run.owner() is None
    run.owner_path.write_text('{"pid": "x"}')
    info = store.list()[0]
    assert info.status is RunStatus.INTERRUPTED and "owner.json" in info.problem
    store.delete("remote")


@pytest.mark.slow  # two interpreters importing torch
def test_other_process_holds_the_lock_then_is_killed(store):
    run = store.create(CONFIG, name="shared")
    holder = _holder(store, "shared")
    try:
        assert run.effective_status() is RunStatus.RUNNING
        info = store.list()[0]
        assert info.status is RunStatus.RUNNING and info.owner["pid"] == holder.pid
        with pytest.raises(RunBusyError, match=f"process {holder.pid} on "):
            run.acquire_writer()
        with pytest.raises(RunBusyError):
            store.delete("shared")
        # notes are the person's: written while another process trains the run
        assert run.set_notes("looked at it mid-run", ["live"]).tags == ("live",)
        assert store.list()[0].note == "looked at it mid-run"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.stdout.close()
    assert run.status() is RunStatus.RUNNING, "what the killed process wrote stays"
    info = store.list()[0]
    assert info.status is RunStatus.INTERRUPTED and info.owner is None and info.problem is None
    with run.acquire_writer():  # resumable: the lock is free
        assert run.owner()["pid"] == os.getpid()
    store.delete("shared")
    assert store.list() == []


def test_forked_child_does_not_keep_the_lock(store):
    """A worker forked while the lock is held must not keep the run locked once the
    parent is gone (kill -9 of a trainer whose workers linger)."""
    run = store.create(CONFIG, name="forked", acquire=True)
    writer = run.writer
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: alive (with whatever it inherited) until told to end
        try:
            os.write(ready_w, b"r")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"r"
        assert run._lock_held() is True
        # the parent "dies": its lock descriptor is closed without release()
        os.close(writer._lock_fd)
        writer._lock_fd = None
        assert run._lock_held() is False, "the child's copy of the lock was closed"
        assert run.effective_status() is RunStatus.INTERRUPTED
    finally:
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        writer.release()


# --- files read defensively (issue 13: items 6 and 13) --------------------------------------


def test_run_files_are_never_read_or_written_through_symlinks(store, tmp_path):
    run = store.create(CONFIG, name="links")
    run.set_status("finished")
    run.write_summary({"mi": [_row("trained", "nose", 0.5)]})
    run.append_metrics([(1, 0, "train", "loss", 1.0)])
    run.save_checkpoint({"w": torch.ones(2)}, step=1, epoch=0)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("config.json", "status.json", "summary.json", "metrics.csv"):
        target = outside / name
        target.write_bytes((run.path / name).read_bytes())
        (run.path / name).unlink()
        (run.path / name).symlink_to(target)
    run = store.open("links")  # the config is read again, not cached
    with pytest.raises(RunFileError, match="config.json is a symbolic link"):
        run.config()
    with pytest.raises(RunFileError, match="status.json is a symbolic link"):
        run.status()
    with pytest.raises(RunFileError, match="summary.json is a symbolic link"):
        run.summary()
    with pytest.raises(RunFileError, match="metrics.csv is a symbolic link"):
        run.read_metrics()
    with pytest.raises(RunFileError, match="metrics.csv is a symbolic link"):
        run.append_metrics([(2, 0, "train", "loss", 0.5)])
    assert (outside / "metrics.csv").read_text().count("\n") == 2, "nothing written there"
    info = store.list()[0]
    assert info.status is None and "symbolic link" in info.problem

    # replacing a linked file replaces the link, never what it points to
    run.set_status("failed")
    assert not (run.path / "status.json").is_symlink()
    assert json.loads((outside / "status.json").read_text())["status"] == "finished"

    # a linked checkpoints/ folder: refused for reading, writing and pruning
    real = run.path / "checkpoints"
    moved = outside / "checkpoints"
    real.rename(moved)
    real.symlink_to(moved, target_is_directory=True)
    with pytest.raises(CorruptCheckpointError, match="checkpoints/ is a symbolic link"):
        run.load_checkpoint()
    with pytest.raises(RunFileError, match="checkpoints/ is a symbolic link"):
        run.has_checkpoint()
    before = sorted(p.name for p in moved.iterdir())
    run.keep_checkpoints = 1
    with pytest.raises(RunFileError, match="symbolic link"):
        run.save_checkpoint({"w": torch.zeros(2)}, step=2, epoch=0)
    assert sorted(p.name for p in moved.iterdir()) == before, "nothing written or pruned there"


def test_pruning_removes_links_not_their_targets(store, tmp_path):
    run = store.create(CONFIG, name="prune-links")
    run.keep_checkpoints = 1
    run.save_checkpoint({"w": torch.ones(2)}, step=1, epoch=0)
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"keep me")
    (run.checkpoint_dir / "step-00000000.safetensors").symlink_to(precious)
    (run.checkpoint_dir / "step-00000000.json").mkdir()  # a folder where a file should be
    run.save_checkpoint({"w": torch.zeros(2)}, step=2, epoch=0)
    assert precious.read_bytes() == b"keep me"
    assert not (run.checkpoint_dir / "step-00000000.safetensors").is_symlink()
    assert run.load_checkpoint().step == 2


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"status": "runn', id="truncated"),
        pytest.param(b"\xff\xfe\x00garbage\x80", id="not-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
        pytest.param(b'{"status": 5}', id="wrong-type"),
        pytest.param(b'{"status": "running", "message": ["x"]}', id="wrong-message"),
        pytest.param(b"1" * 10_000, id="huge-number"),
    ],
)
def test_malformed_status_is_a_problem_not_an_exception(store, content):
    run = store.create(CONFIG, name="bad")
    run.status_path.write_bytes(content)
    with pytest.raises(RunFileError, match="status.json"):
        run.status()
    info = store.list()[0]
    assert info.status is None and info.problem.startswith("status.json")


def test_size_caps_and_odd_file_kinds(store, monkeypatch):
    import mist_core.runs as runs
    from mist_core.runs import run as run_module

    run = store.create(CONFIG, name="odd")
    run.append_metrics([(1, 0, "train", "loss", 1.0)])
    with open(run.summary_path, "wb") as f:
        f.truncate(runs.MAX_JSON_BYTES + 1)  # sparse: no disk used, never read
    with pytest.raises(
        RunFileError,
        match=r"summary.json is 16.8 MB \(16,777,217 bytes\), over the limit of 16,777,216",
    ):
        run.summary()
    run.summary_path.unlink()
    run.summary_path.mkdir()
    with pytest.raises(RunFileError, match="summary.json is a folder"):
        run.summary()
    run.summary_path.rmdir()
    os.mkfifo(run.summary_path)  # would block a plain open() for ever
    with pytest.raises(RunFileError, match="summary.json is not a regular file"):
        run.summary()
    run.summary_path.unlink()

    monkeypatch.setattr(run_module, "MAX_METRICS_BYTES", 1000)
    with open(run.metrics_path, "ab") as f:
        f.write(b"2,0,train,loss,0.5\n" * 100)
    with pytest.raises(
        RunFileError, match="metrics.csv is 1.9 kB .* over the limit of 1,000 bytes"
    ):
        run.read_metrics()
    info = store.list()[0]
    assert info.problem is None and info.last_step == 2, "list reads only the tail"
    with open(run.metrics_path, "ab") as f:
        f.truncate(2 * 2**30)  # 2 GB of zeros, sparse: the tail is read, not the file
    info = store.list()[0]
    assert info.problem is None and info.last_step is None


@pytest.mark.parametrize(
    ("summary", "message"),
    [
        ({"mi": "x"}, r"'mi' must be a list"),
        ({"mi": [1]}, r"mi\[0\] must be an object"),
        ({"mi": [{"encoder": "a", "landmark": "nose", "mi": 1.0}]}, r"mi\[0\].std_error"),
        ({"mi": [{"encoder": 3, "landmark": "nose", "mi": 1, "std_error": 0}]}, "encoder"),
        ({"mi": [_row("a", "nose", "1.0")]}, r"mi\[0\].mi must be a number"),
        ({"mi": [_row("a", "nose", True)]}, r"mi\[0\].mi must be a number"),
        ({"mi": [_row("a", "nose", float("inf"))]}, r"mi\[0\].mi must be a number"),
        ({"mi": [_row("a", "nose", 1.0), _row("a", "nose", 2.0)]}, "two rows"),
        ({"steps": 1.5}, "'steps' must be a non-negative integer"),
        ({"epochs": -1}, "'epochs'"),
        ({"train_seconds": "fast"}, "'train_seconds'"),
        ({"environment": {"torch": 2}}, "'environment'"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_summary_shape_is_checked(store, summary, message):
    run = store.create(CONFIG, name="shape")
    run.summary_path.write_text(json.dumps(summary))
    with pytest.raises(RunFileError, match=message):
        run.summary()
    info = store.list()[0]
    assert info.config == CONFIG and info.summary is None, "the rest of the run still lists"
    assert info.problem.startswith("summary.json")


def test_summary_with_nan_and_extra_keys_is_fine(store):
    run = store.create(CONFIG, name="nan")
    summary = {
        "mi": [_row("a", "nose", float("nan"), float("nan")) | {"extra": 1}],
        "steps": 3,
        "epochs": 1,
        "train_seconds": 1.5,
        "environment": {"torch": "2"},
        "anything": [None],
    }
    run.write_summary(summary)
    assert math.isnan(run.summary()["mi"][0]["mi"]) and store.list()[0].problem is None


def test_one_file_mode_for_everything_a_run_writes(store):
    old = os.umask(0o027)
    try:
        run = store.create(CONFIG, name="modes", acquire=True)
        run.set_status("running")
        run.append_metrics([(1, 0, "train", "loss", 1.0)])
        run.write_summary({"steps": 1})
        run.save_checkpoint({"w": torch.ones(2)}, step=1, epoch=0, optimizer_state={"x": 1})
        run.truncate_metrics(5)
        run.set_notes("a note", ["tag"])
        run.writer._beat()
        run.writer.release()
        run.acquire_writer()  # owner.json again, for the listing
    finally:
        os.umask(old)
    try:
        modes = {}
        for path in [run.path, *run.path.rglob("*")]:
            modes[path.relative_to(store.root).as_posix()] = oct(path.stat().st_mode & 0o777)
        files = {p: m for p, m in modes.items() if not (store.root / p).is_dir()}
        folders = {p: m for p, m in modes.items() if (store.root / p).is_dir()}
        assert set(files.values()) == {"0o640"}, files
        assert set(folders.values()) == {"0o750"}, folders
        assert {"modes/.lock", "modes/owner.json", "modes/metrics.csv", "modes/notes.json"} <= set(
            files
        )
    finally:
        run.writer.release()


def test_open_by_name_or_folder_path(store, tmp_path, monkeypatch):
    store.create(CONFIG, name="by-path")
    monkeypatch.chdir(tmp_path)  # the store is ./runs
    relative = run_store("runs")
    for given in (
        "by-path",
        "runs/by-path",
        "runs/by-path/",
        "./runs/by-path",
        f"{tmp_path}/runs/by-path",
    ):
        assert relative.open(given).name == "by-path", given
        assert store.open(given).path == store.root / "by-path", given
    assert store.open(store.root / "by-path").name == "by-path"
    assert store.info("runs/by-path").name == "by-path"
    other = run_store(tmp_path / "elsewhere")
    other.create(CONFIG, name="foreign")
    for given in ("elsewhere/foreign", str(other.root / "foreign"), "runs/../elsewhere/foreign"):
        with pytest.raises(ValueError, match="not a run folder of"):
            store.open(given)
    with pytest.raises(ValueError):
        store.open("runs/by-path/..")
    with pytest.raises(FileNotFoundError, match="available: by-path"):
        store.open("runs/nope")


def test_half_created_and_leftover_folders(store):
    from mist_core.runs import store as store_module

    store.create(CONFIG, name="a")
    staging = store.root / ".creating-dead"
    staging.mkdir()
    (staging / "config.json").write_text(CONFIG.to_json())
    trash = store.root / ".deleting-x-1234"
    trash.mkdir()
    assert [i.name for i in store.list()] == ["a"], "hidden folders are never runs"
    old = time.time() - store_module._STALE_LEFTOVER_S - 10
    os.utime(staging, (old, old))
    store.create(CONFIG, name="b")
    assert not staging.exists() and trash.exists(), "only stale leftovers are removed"


# --- notes ----------------------------------------------------------------------------------


def test_notes_round_trip_atomically(store):
    run = store.create(CONFIG, name="noted")
    assert run.notes() == RunNotes() and run.notes().updated is None, "no notes.json: empty"
    before = time.time()
    stored = run.set_notes("lr too high?\nsee epoch 2", [" baseline ", "lr", "baseline"])
    assert stored.note == "lr too high?\nsee epoch 2"
    assert stored.tags == ("baseline", "lr"), "stripped, the repeat dropped, order kept"
    assert before <= stored.updated <= time.time()
    assert run.notes() == stored
    assert store.open("noted").notes() == stored, "a fresh Run object reads them"
    assert json.loads(run.notes_path.read_text()) == {
        "note": "lr too high?\nsee epoch 2",
        "tags": ["baseline", "lr"],
        "updated": stored.updated,
    }
    assert run.set_notes("", (t for t in ["x"])).tags == ("x",), "any iterable of tags"
    assert run.notes().note == ""
    assert [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")] == []
    info = store.info("noted")
    assert (info.note, info.tags, info.problem) == ("", ("x",), None)
    assert store.create(CONFIG, name="bare") and store.info("bare").tags == ()


@pytest.mark.parametrize(
    ("note", "tags", "message"),
    [
        ("x" * 10_001, [], "at most 10,000 characters"),
        ("", [f"t{i}" for i in range(21)], "at most 20 tags"),
        ("", ["a, b"], "comma"),
        ("", ["two\nlines"], "line break"),
        ("", ["  "], "must not be empty"),
        ("", ["t" * 41], "at most 40"),
        ("", "baseline", "not one string"),
        ("", [3], "must be a string"),
        (None, [], "must be a string"),
    ],
)
def test_invalid_notes_say_what_to_do_and_write_nothing(store, note, tags, message):
    run = store.create(CONFIG, name="strict")
    run.set_notes("kept", ["old"])
    with pytest.raises(ValueError, match=message):
        run.set_notes(note, tags)
    assert (run.notes().note, run.notes().tags) == ("kept", ("old",))
    assert run.set_notes("x" * 10_000, [f"t{i}" for i in range(20)]).tags[-1] == "t19", "limits"


def test_notes_while_another_run_object_trains_and_after_it_ended(store):
    trainer = store.create(CONFIG, name="busy", acquire=True)
    trainer.set_status("running")
    try:
        dashboard = store.open("busy")
        assert dashboard.set_notes("from the dashboard", ["live"]).note == "from the dashboard"
        with pytest.raises(RunBusyError):
            dashboard.acquire_writer()  # the notes took no lock, and the trainer keeps its own
        assert trainer.writer.held and trainer.notes().tags == ("live",)
        info = store.info("busy")
        assert info.status is RunStatus.RUNNING and info.tags == ("live",)
    finally:
        trainer.writer.release()
    assert store.info("busy").status is RunStatus.INTERRUPTED
    store.open("busy").set_notes("killed?", ["live", "look"])
    for status in ("stopped", "finished", "failed"):
        trainer.set_status(status)
        store.open("busy").set_notes(status, [])
        assert store.info("busy").note == status


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "notes.json is not valid JSON"),
        ('["a"]', "notes.json is a list"),
        ('{"tags": "abc"}', "notes.json: tags must be a list"),
        ('{"note": 3}', "notes.json: a run's note must be a string"),
        ('{"updated": "today"}', "notes.json: 'updated' must be a time"),
    ],
)
def test_damaged_notes_are_a_problem_that_hides_nothing_else(store, content, message):
    run = store.create(CONFIG, name="damaged")
    run.set_status("finished")
    run.write_summary({"mi": [_row("e", "nose", 0.5)], "steps": 4})
    run.append_metrics([(4, 0, "train", "loss", 1.0)])
    run.notes_path.write_text(content)
    with pytest.raises(RunFileError, match=message):
        run.notes()
    info = {i.name: i for i in store.list()}["damaged"]
    assert message in info.problem
    assert info.status is RunStatus.FINISHED and info.config == CONFIG
    assert info.summary["steps"] == 4 and info.last_step == 4
    assert (info.note, info.tags) == ("", ())
    # with the status unreadable too, both problems are said
    run.status_path.write_text('{"status": "dancing"}')
    info = store.info("damaged")
    assert "status.json" in info.problem and message in info.problem
    assert info.config == CONFIG
    run.set_notes("fixed", [])  # setting them again replaces the damaged file
    assert run.notes().note == "fixed"


def test_notes_are_never_read_or_written_through_a_symlink(store, tmp_path):
    run = store.create(CONFIG, name="linked")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"note": "not the run's", "tags": []}))
    run.notes_path.symlink_to(outside)
    with pytest.raises(RunFileError, match="notes.json is a symbolic link"):
        run.notes()
    assert "symbolic link" in store.info("linked").problem
    run.set_notes("mine", [])
    assert not run.notes_path.is_symlink() and run.notes().note == "mine"
    assert json.loads(outside.read_text())["note"] == "not the run's", "the target untouched"
