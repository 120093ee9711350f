"""Run directories: names, statuses, metrics, checkpoints, kills and hostile files."""

from __future__ import annotations

import hashlib
import json
import logging
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

from mist_core.experiment import preset
from mist_core.runs import (
    Checkpoint,
    CorruptCheckpointError,
    Run,
    RunInfo,
    RunStatus,
    RunStore,
)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
CONFIG = preset("demo-cpu", epochs=2, landmarks=["nose"])


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


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
    path.write_text(json.dumps(meta))


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

    run.write_summary({"mi": 1.25, "best_step": 7})
    assert run.summary() == {"mi": 1.25, "best_step": 7}
    assert second.summary() is None
    run.append_metrics([(3, 0, "train", "loss", 0.5), (7, 1, "valid", "loss", 0.25)])

    infos = store.list()
    assert [i.name for i in infos] == ["second", "first"], "newest first"
    first = infos[1]
    assert isinstance(first, RunInfo) and first.problem is None
    assert first.status is RunStatus.FAILED and first.config == CONFIG
    assert first.summary == {"mi": 1.25, "best_step": 7} and first.last_step == 7
    assert infos[0].config.seed == 3 and infos[0].last_step is None
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
    with pytest.raises(RuntimeError, match="running"):
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
    assert infos["good"].problem is None and infos["good"].status is RunStatus.QUEUED
    for name in ("no-config", "bad-json", "bad-field", "bad-status", "torn-status"):
        assert infos[name].status is None, name
        assert infos[name].problem, name
    assert "config.json" in infos["no-config"].problem
    assert "status.json" in infos["bad-status"].problem
    for name in ("notes.txt", "garbage.bin"):
        assert infos[name].status is None and "not a run directory" in infos[name].problem
    assert "summary.json" in infos["bad-summary"].problem
    assert infos["bad-summary"].status is RunStatus.QUEUED
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
