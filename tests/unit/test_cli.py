"""The headless CLI, run as a user would: ``python -m mist_core ...`` in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mist_core.checkpoints import run_store
from mist_core.cli import main
from mist_core.experiment import preset
from mist_core.runs import RunStatus

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--set",
    "train_size=48",
    "--set",
    "test_size=16",
    "--set",
    "image_size=[40,32]",
    "--set",
    "batch_size=8",
    "--set",
    'encoders=["random_init","trained"]',
    "--set",
    'landmarks=["nose","left_eye"]',
    "--set",
    "valid_fraction=0.0",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mist_core", "--run-dir", str(tmp_path / "runs"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=tmp_path,
    )


def test_train_list_and_evaluate(tmp_path, capsys):
    done = _cli(
        tmp_path, "train", "--preset", "demo-cpu", *TINY, "--set", "epochs=1", "--name", "tiny"
    )
    assert done.returncode == 0, done.stderr
    assert "run tiny: finished at step 6" in done.stdout
    assert "MI in nats" in done.stdout and "random_init" in done.stdout
    table = done.stdout[done.stdout.index("MI in nats") :]

    # list and evaluate in-process (the subprocess above already proved the entry point)
    assert main(["--run-dir", str(tmp_path / "runs"), "list"]) == 0
    listed = capsys.readouterr().out
    assert "tiny" in listed and "finished" in listed

    # the calibration the job stored is printed as it is (measuring again takes minutes)
    assert main(["--run-dir", str(tmp_path / "runs"), "evaluate", "tiny"]) == 0
    stored = capsys.readouterr().out
    assert stored.rstrip().endswith(
        "(measured when the run finished; --measure measures it again)"
    )
    assert stored[stored.index("MI in nats") :].startswith(table)
    # --save measures it again and stores it
    assert main(["--run-dir", str(tmp_path / "runs"), "evaluate", "tiny", "--save"]) == 0
    evaluated = capsys.readouterr().out
    # the reloaded checkpoint gives the very table the job printed, then the calibration
    mi, calibration = evaluated[evaluated.index("MI in nats") :].split("How often", 1)
    assert mi == table
    *rows, saved = calibration.splitlines()[2:]
    assert len(rows) == 2 * 3, "two landmarks x (the marginal and two encoders)"
    assert saved.startswith("saved into") and saved.endswith("summary.json")
    assert all(len(row.split()) >= 7 for row in rows)
    # --save stored the report it printed in the summary the job wrote it to
    from mist_core.calibration import CalibrationReport
    from mist_core.runs import RunStore

    saved = RunStore(tmp_path / "runs").open("tiny").summary()
    report = CalibrationReport.from_dict(saved["calibration"])
    assert report.row("trained", "nose").faces == 16 and saved["mi"]

    # a run folder's path, as tab completion gives it, from the folder above runs/
    by_path = _cli(tmp_path, "evaluate", "runs/tiny/", "--calibration-faces", "0")
    assert by_path.returncode == 0, by_path.stderr
    assert by_path.stdout[by_path.stdout.index("MI in nats") :] == table
    # ... and with --run-dir left at its default, from anywhere
    elsewhere = subprocess.run(
        [
            sys.executable,
            "-m",
            "mist_core",
            "evaluate",
            str(tmp_path / "runs" / "tiny"),
            "--calibration-faces",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=ROOT,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert not (ROOT / "runs" / "tiny").exists()


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    runs = ["--run-dir", str(tmp_path / "runs")]
    assert main([*runs, "train", "--preset", "demo-cpu", "--set", "epoch=3"]) == 2
    assert "error: unknown config field(s) ['epoch']" in capsys.readouterr().err
    assert main([*runs, "evaluate", "no-such-run"]) == 2
    assert "no-such-run" in capsys.readouterr().err
    assert main([*runs, "evaluate", "../etc"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main([*runs, "train", "--set", "epochs"]) == 2
    assert "key=value" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("batch_size=abc", "batch_size"),
        ("epochs=1.5", "epochs"),
        ("batch_size=1e9", "batch_size"),
        ("image_size=[100000,100000]", "image_size"),
        ("device=tpu", "device"),
        ('encoders={"a": 1}', "encoders"),
        ("landmarks=7", "landmarks"),
    ],
)
def test_invalid_config_values_are_one_line_and_exit_2(tmp_path, capsys, change, field):
    code = main(["--run-dir", str(tmp_path / "runs"), "train", "--set", change])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], lines
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_invalid_config_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"batch_size": "abc"}')
    assert main(["--run-dir", str(tmp_path / "runs"), "train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json" in err and err.count("\n") == 1
    assert main(["--run-dir", str(tmp_path / "runs"), "train", "--config", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_list_shows_broken_and_interrupted_runs_and_exits_0(tmp_path, capsys):
    store = run_store(tmp_path / "runs")
    config = preset("demo-cpu", epochs=1)
    good = store.create(config, name="good")
    good.set_status("finished")
    good.write_summary({"mi": [{"encoder": "e", "landmark": "nose", "mi": 0.5, "std_error": 0.1}]})
    killed = store.create(config, name="killed")
    killed.set_status("running")  # its process is gone: no lock holder
    broken = store.create(config, name="broken-summary")
    broken.set_status("finished")
    broken.summary_path.write_text('{"mi": "x"}')
    (store.root / "no-config").mkdir()
    live = store.create(config, name="live", acquire=True)
    live.set_status("running")
    try:
        assert main(["--run-dir", str(store.root), "list"]) == 0
    finally:
        live.writer.release()
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "finished" in rows["good"] and "best I(e;nose) = 0.50" in rows["good"]
    assert "interrupted" in rows["killed"]
    assert "finished" in rows["broken-summary"] and "synthetic" in rows["broken-summary"]
    assert "problem: summary.json: 'mi' must be a list" in rows["broken-summary"]
    assert "unreadable" in rows["no-config"] and "config.json is missing" in rows["no-config"]
    assert "running" in rows["live"] and f"process {os.getpid()}" in rows["live"]


def test_evaluate_and_resume_errors_are_one_line(tmp_path, capsys):
    store = run_store(tmp_path / "runs")
    run = store.create(preset("demo-cpu", epochs=1), name="r")
    runs = ["--run-dir", str(store.root)]
    assert main([*runs, "evaluate", "r"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main([*runs, "resume", str(run.path)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    run.config_path.write_text('{"batch_size": "abc"}')
    assert main([*runs, "evaluate", str(run.path) + "/"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "config.json" in err and "Traceback" not in err
    with run.acquire_writer():
        assert main([*runs, "resume", "r"]) == 2
        err = capsys.readouterr().err
        assert "error: run 'r' is being trained by this process" in err
    other = run_store(tmp_path / "elsewhere")
    other.create(preset("demo-cpu"), name="x")
    assert main([*runs, "evaluate", str(other.root / "x")]) == 2  # found there, no checkpoint
    assert "no checkpoint" in capsys.readouterr().err


def test_note_then_list_shows_the_note_and_tags(tmp_path, capsys):
    store = run_store(tmp_path / "runs")
    config = preset("demo-cpu", epochs=1)
    store.create(config, name="done").set_status("finished")
    runs = ["--run-dir", str(store.root)]
    assert main([*runs, "note", "done"]) == 0
    assert capsys.readouterr().out == "run done\ntags: (none)\nnote: (none)\n"
    long = "lr 1e-3 diverged\nafter epoch 2; " + "x" * 80
    assert main([*runs, "note", "done", "--note", long, "--tag", "baseline", "--tag", "lr"]) == 0
    out = capsys.readouterr().out
    assert "tags: baseline, lr\nnote: lr 1e-3 diverged\nafter epoch 2;" in out
    assert main([*runs, "note", "done", "--tag", "lr", "--tag", "look"]) == 0
    assert "tags: baseline, lr, look\n" in capsys.readouterr().out, "added, kept, once"
    assert main([*runs, "note", str(store.root / "done"), "--clear-tags", "--tag", "keep"]) == 0
    assert "tags: keep\nnote: lr 1e-3" in capsys.readouterr().out, "the note stays"
    assert store.open("done").notes().tags == ("keep",)
    # a run being trained (its writer lock held) takes notes too
    live = store.create(config, name="live", acquire=True)
    live.set_status("running")
    try:
        assert main([*runs, "note", "live", "--note", "still going"]) == 0
        capsys.readouterr()
        assert main([*runs, "list"]) == 0
    finally:
        live.writer.release()
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["live"].endswith('"still going"') and "running" in rows["live"]
    shown = " ".join(long.split())[:57] + '..."'
    assert rows["done"].endswith(f'  [keep]  "{shown}'), "tags, then the note's start"
    assert "\n" not in rows["done"] and "finished" in rows["done"]
    # mistakes are one error line
    assert main([*runs, "note", "done", "--tag", "a,b"]) == 2
    assert "error: " in (err := capsys.readouterr().err) and "comma" in err
    assert main([*runs, "note", "nowhere"]) == 2
    assert "no run 'nowhere'" in capsys.readouterr().err
    store.open("done").notes_path.write_text("{torn")
    assert main([*runs, "note", "done", "--tag", "x"]) == 2
    assert "notes.json is not valid JSON" in capsys.readouterr().err
    assert main([*runs, "list"]) == 0
    assert "problem: notes.json is not valid JSON" in capsys.readouterr().out
    # replacing the note and the tags needs nothing of the damaged file
    assert main([*runs, "note", "done", "--note", "fresh", "--clear-tags"]) == 0
    assert store.open("done").notes().note == "fresh"


@pytest.mark.slow
def test_evaluate_two_seeds_prints_their_mean(tmp_path, capsys):
    runs = ["--run-dir", str(tmp_path / "runs")]
    tiny = [*TINY, "--set", "epochs=1"]
    for seed in (0, 1):
        train = [*runs, "train", "--preset", "demo-cpu", *tiny, "--set", f"seed={seed}"]
        assert main([*train, "--name", f"seed{seed}"]) == 0
    capsys.readouterr()
    store = run_store(tmp_path / "runs")
    store.create(preset("demo-cpu", epochs=1), name="untrained")  # no checkpoint
    quick = ["--calibration-faces", "0"]
    assert main([*runs, "evaluate", "seed0", "seed1", str(store.root / "untrained"), *quick]) == 2
    captured = capsys.readouterr()
    assert "error: cannot evaluate run 'untrained'" in captured.err, "said, the others go on"
    out = captured.out
    assert out.count("MI in nats (± standard error)") == 2
    assert "run seed0, checkpoint of step 6" in out and "run seed1, checkpoint" in out
    group = out[out.index("seeds 0, 1 of seed0 (mean ± s.e. across 2 runs)") :]
    assert group.splitlines()[2].split() == ["encoder", "random_init", "trained", "k"]
    # each cell: the mean of the two runs' estimates (the job's, which evaluate reproduces)
    # and, for k = 2, s.e. = |a - b| / sqrt(2) / sqrt(2) = |a - b| / 2
    tables = [store.open(f"seed{s}").summary()["mi"] for s in (0, 1)]
    for a, b in zip(*tables, strict=True):
        line = next(row for row in group.splitlines() if row.startswith(a["landmark"]))
        cell = f"{(a['mi'] + b['mi']) / 2:6.3f} ± {abs(a['mi'] - b['mi']) / 2:.3f}"
        assert cell in line and line.rstrip().endswith(" 2"), (cell, line)
    # one run (or the same run twice) prints no group
    assert main([*runs, "evaluate", "seed0", str(store.root / "seed0"), *quick]) == 0
    captured = capsys.readouterr()
    assert "seeds " not in captured.out and captured.out.count("run seed0,") == 1
    assert "run seed0 is given twice; evaluated once" in captured.err


@pytest.mark.slow
def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mist_core",
            "--run-dir",
            str(tmp_path / "runs"),
            "train",
            "--preset",
            "demo-cpu",
            *TINY,
            "--set",
            "train_size=160",  # 20 steps per epoch: still training when Ctrl-C comes
            "--set",
            "epochs=3",
            "--name",
            "interrupted",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
        # A shell's background jobs (CI may run us as one) inherit SIGINT ignored, and
        # Python then installs no Ctrl-C handler: give the child the default, as a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run_dir = tmp_path / "runs" / "interrupted"
    deadline = time.monotonic() + 120
    while (
        not (run_dir / "metrics.csv").exists()
        or "train,loss" not in (run_dir / "metrics.csv").read_text()
    ):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "resume with: python -m mist_core resume interrupted" in out
    run = run_store(tmp_path / "runs").open("interrupted")
    assert run.status() is RunStatus.STOPPED
    stopped_at = run.load_checkpoint().step
    assert 1 <= stopped_at < 60

    resumed = _cli(tmp_path, "resume", "interrupted")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished at step 60" in resumed.stdout
    metrics = run.read_metrics()
    losses = metrics[(metrics.split == "train") & (metrics.name == "loss")]
    assert list(losses.step) == list(range(1, 61)), "every step once, across the interruption"


@pytest.mark.slow
def test_torchrun_two_processes_with_gloo_write_one_run(tmp_path):
    """Data-parallel on CPU: 2 processes, each on half of every batch of 8."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "mist_core",
            "--run-dir",
            str(tmp_path / "runs"),
            "train",
            "--preset",
            "demo-cpu",
            *TINY,
            "--set",
            "epochs=2",
            "--set",
            "device=cpu",
            "--name",
            "ddp",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run ddp: finished at step 12") == 1, "only rank 0 reports"
    runs = run_store(tmp_path / "runs").list()
    assert [r.name for r in runs] == ["ddp"] and runs[0].status is RunStatus.FINISHED
    metrics = run_store(tmp_path / "runs").open("ddp").read_metrics()
    losses = metrics[(metrics.split == "train") & (metrics.name == "loss")]
    assert list(losses.step) == list(range(1, 13)), "12 steps of the global batch, written once"


# --- warnings under the MI table, and `estimate` from files ------------------------------


def test_format_warnings_lists_each_pairs_warnings_and_nothing_when_none():
    from mist_core.cli import format_warnings
    from mist_core.results import PairEstimate

    clean = PairEstimate("trained", "nose", 0.5, 0.01)
    flagged = PairEstimate("trained", "chin", -0.4, 0.01, warnings=("below zero", "few"))
    assert format_warnings([clean]) == ""
    assert format_warnings([clean, flagged]).splitlines() == [
        "Warnings:",
        "I(trained;chin): below zero",
        "I(trained;chin): few",
    ]


def _samples(tmp_path: Path, n: int = 2000) -> tuple[Path, object, object]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(n)
    y = x + 0.5 * rng.standard_normal(n)  # 0.5 log 5 = 0.80 nats
    path = tmp_path / "samples.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


def test_estimate_from_a_npz_or_two_npy_files(tmp_path, capsys):
    import json

    import numpy as np

    path, x, y = _samples(tmp_path)
    assert main(["estimate", str(path), "--estimator", "gaussian"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("I(X;Y) = 0.8") and out[0].endswith(" nats") and "±" in out[0]
    assert out[1] == "estimator: gaussian"
    assert out[2].startswith("evaluated on: 1,000 samples to fit, 1,000 held out")
    assert out[2].endswith(" s")
    assert not any(line.startswith("warning:") for line in out)

    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y[:, None])
    files = [str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    assert main(["estimate", *files, "--estimator", "gaussian", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mi"] == pytest.approx(0.5 * np.log(5), abs=0.1)
    assert record["estimator"] == "gaussian" and record["warnings"] == []
    assert set(record) >= {"mi", "std_error", "estimator", "details", "warnings", "seconds"}

    np.savez(tmp_path / "named.npz", a=x, b=y)
    named = str(tmp_path / "named.npz")
    assert main(["estimate", named, "--x", "a", "--y", "b", "--estimator", "gaussian"]) == 0
    assert capsys.readouterr().out.startswith("I(X;Y) = 0.8")


def test_estimate_prints_the_reason_and_every_warning(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    import mist_core.cli as cli

    path, _, _ = _samples(tmp_path, 300)
    result = SimpleNamespace(
        mi=-7591.0,
        std_error=7591.0,
        estimator="js",
        details={"reason": "asked for"},
        warnings=("a few samples carry it", "still rising"),
        seconds=1.25,
        n_train=150,
        n_test=150,
    )
    calls = []
    monkeypatch.setattr(cli, "estimate_mi", lambda x, y, **kw: calls.append(kw) or result)
    assert main(["estimate", str(path), "--estimator", "js", "--seed", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert calls == [{"estimator": "js", "seed": 3, "device": "cpu"}]
    assert out[1:] == [
        "estimator: js",
        "why: asked for",
        "evaluated on: 150 samples to fit, 150 held out; 1.2 s",
        "warning: a few samples carry it",
        "warning: still rising",
    ]
    del result.warnings, result.details  # a result of before these fields: no lines
    assert main(["estimate", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out


def test_estimate_file_errors_are_one_line_and_exit_2(tmp_path, capsys):
    import numpy as np

    path, x, _ = _samples(tmp_path, 300)
    cases = {
        (str(tmp_path / "none.npz"),): "no such file",
        (str(path), "--x", "u"): "has no array named 'u' (its arrays: x, y)",
        (str(path), str(path)): "is a .npz archive",
        (str(tmp_path / "x.npy"),): "one .npy file: give a .npz holding x and y",
    }
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "junk.npz").write_text("not an archive")
    cases[(str(tmp_path / "junk.npz"),)] = "is not a .npz file"
    np.savez(tmp_path / "cube.npz", x=np.zeros((300, 2, 2)), y=x)
    cases[(str(tmp_path / "cube.npz"),)] = (
        "x has shape (300, 2, 2): x and y must be (N,) or (N, D)"
    )
    np.savez(tmp_path / "short.npz", x=x, y=x[:200])
    cases[(str(tmp_path / "short.npz"),)] = "same number of samples (rows), got 300 and 200"
    for args, message in cases.items():
        assert main(["estimate", *args, "--estimator", "gaussian"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
