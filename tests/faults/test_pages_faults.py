"""Every page under AppTest over runs whose files are corrupted (issue 13, item 6).

One real tiny run is trained once; each case is a copy of it with one file truncated,
replaced by garbage, given wrong types, made huge (sparse) or replaced by a symlink. Every
page is run over every case: none may show an exception. The counts are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))  # the AppTest helpers

from app_helpers import (  # noqa: E402  (sets MIST_WARM_UP=0 before the app loads)
    PAGES,
    face_jpeg,
    new_app,
    one_torch_thread,
    state,
)

from mist_core.experiment import preset  # noqa: E402
from mist_core.jobs import JobRegistry  # noqa: E402

pytestmark = pytest.mark.slow

TINY = dict(
    train_size=48,
    test_size=16,
    image_size=(40, 32),
    batch_size=8,
    epochs=1,
    valid_fraction=0.0,
    encoders=("random_init",),  # frozen only: the checkpoint is small, copies are cheap
)
#: The file of a run each corruption targets, relative to the run's folder.
FILES = {
    "summary": "summary.json",
    "config": "config.json",
    "status": "status.json",
    "metrics": "metrics.csv",
    "owner": "owner.json",
    "latest": "checkpoints/latest.json",
}
#: Valid JSON/CSV of the wrong types, per file.
WRONG_TYPES = {
    "summary": json.dumps({"mi": [{"encoder": 1, "landmark": None, "mi": [], "std_error": {}}]}),
    "config": json.dumps({"batch_size": "abc", "encoders": 5, "image_size": "big"}),
    "status": json.dumps({"status": 5, "created": "yesterday"}),
    "metrics": "step,epoch,split,name,value\nx,y,train,loss,nan-ish\n1,0,train,loss,[1]\n",
    "owner": json.dumps({"pid": "abc", "host": 5, "started": [], "heartbeat": {}}),
    "latest": json.dumps({"step": "x", "files": 3}),
}
CORRUPTIONS = ("truncated", "garbage", "wrong-types", "huge", "symlinked")
PAGE_NAMES = ("train", "results", "posteriors", "photo", "about")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pages-faults-source")
    with one_torch_thread():
        job = JobRegistry(root).submit(preset("demo-cpu", **TINY))
        assert job.wait(300)
        assert job.snapshot().state.value == "finished", job.snapshot().error
    run = root / job.snapshot().run_name
    if not (run / "owner.json").exists():
        (run / "owner.json").write_text(
            json.dumps({"pid": 1, "host": "x", "started": 0.0, "heartbeat": 0.0})
        )
    return run


def _corrupt(path: Path, kind: str, wrong: str, outside: Path) -> None:
    original = path.read_bytes() if path.exists() else b"{}"
    path.unlink(missing_ok=True)
    if kind == "truncated":
        path.write_bytes(original[: max(1, len(original) // 2)])
    elif kind == "garbage":
        path.write_bytes(os.urandom(512) + b"\x00\xff{[\n")
    elif kind == "wrong-types":
        path.write_text(wrong)
    elif kind == "huge":  # sparse: beyond every size limit, no disk used
        with open(path, "wb") as f:
            f.truncate(600 * 2**20 if path.suffix == ".csv" else 64 * 2**20)
    elif kind == "symlinked":  # a valid copy outside the run, linked in
        outside.write_bytes(original)
        path.symlink_to(outside)


def _run_page(page: str, root: Path, monkeypatch) -> list[str]:
    """Run one page over ``root``; the exceptions it showed (empty: it held)."""
    monkeypatch.setattr(state, "RUNS_DIR", root)
    monkeypatch.setattr(state, "warm_up", lambda: None)
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = new_app().run()
        if page != "train":
            at.switch_page(f"{PAGES}/{page}.py").run()
        if page == "photo" and not at.exception:
            at.file_uploader[0].set_value(("face.jpg", face_jpeg(), "image/jpeg")).run()
        return [e.message for e in at.exception]
    except Exception as error:  # noqa: BLE001 - an AppTest failure counts as not held
        return [f"{type(error).__name__}: {error}"]
    finally:
        state.registry().shutdown(wait=True, timeout=60)


@pytest.mark.parametrize("target", list(FILES))
def test_every_page_survives_a_corrupted_run_file(target, good_run, tmp_path, monkeypatch):
    tried, held, failures = 0, 0, []
    with one_torch_thread():
        for kind in CORRUPTIONS:
            root = tmp_path / kind / "runs"
            run = root / good_run.name
            shutil.copytree(good_run, run, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
            _corrupt(run / FILES[target], kind, WRONG_TYPES[target], tmp_path / f"{kind}.out")
            for page in PAGE_NAMES:
                tried += 1
                shown = _run_page(page, root, monkeypatch)
                if shown:
                    failures.append(f"{target}/{kind} on {page}: {shown[0][:300]}")
                else:
                    held += 1
            shutil.rmtree(tmp_path / kind, ignore_errors=True)
    report = f"{FILES[target]} corrupted 5 ways x 5 pages: tried {tried}, held {held}"
    print(f"\n{report}")
    assert held == tried, report + "\n" + "\n".join(failures)
