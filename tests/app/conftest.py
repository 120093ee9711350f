"""Fixtures for the dashboard's AppTest tests (``streamlit.testing.v1.AppTest``).

AppTest runs the app's scripts in this process, so what the app keeps in
``st.cache_resource`` (the job registry, loaded models) is shared by every test. Each test
points ``ui.state.RUNS_DIR`` at its own runs folder and clears Streamlit's caches
(``use_runs``); the tiny trained runs are made once per session, without the app.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from app_helpers import one_torch_thread, state, tiny_config

from mist_core.jobs import JobRegistry


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def _train(root: Path, **changes) -> str:
    with one_torch_thread():
        registry = JobRegistry(root)
        job = registry.submit(tiny_config(**changes))
        assert job.wait(timeout=300), "the fixture's tiny training did not end within 5 min"
        snap = job.snapshot()
        assert snap.state.value == "finished", f"the fixture's training failed: {snap.error}"
        # "finished; the posterior regions could not be checked (...)" leaves no calibration
        assert snap.message == "finished", f"the fixture's run: {snap.message}"
        return snap.run_name


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A runs folder with one finished tiny run, checkpoint included: ``(folder, name)``."""
    root = tmp_path_factory.mktemp("runs-trained")
    yield root, _train(root)
    shutil.rmtree(root, ignore_errors=True)  # ~140 MB of checkpoint


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory, trained_runs) -> Iterator[tuple[Path, str, str]]:
    """A runs folder with two finished runs: ``(folder, older, newer)``. The older is
    ``trained_runs``' run copied without its checkpoints (Results does not read them)."""
    first_root, first = trained_runs
    root = tmp_path_factory.mktemp("runs-two")
    shutil.copytree(first_root / first, root / first, ignore=shutil.ignore_patterns("checkpoints"))
    yield root, first, _train(root, seed=1)
    shutil.rmtree(root, ignore_errors=True)


def _clear_caches() -> None:
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def use_runs(monkeypatch):
    """``use_runs(folder)``: this test's app reads and writes runs in ``folder``, with a new
    job registry and empty caches. Jobs still running at the end are stopped."""

    def use(folder: Path) -> Path:
        monkeypatch.setattr(state, "RUNS_DIR", Path(folder))
        # Belt and braces with MIST_WARM_UP=0: never draw the default demo's faces.
        monkeypatch.setattr(state, "warm_up", lambda: None)
        _clear_caches()
        return Path(folder)

    yield use
    state.registry().shutdown(wait=True, timeout=60)
    _clear_caches()


@pytest.fixture
def empty_runs(tmp_path, use_runs) -> Iterator[Path]:
    """An empty runs folder; removed afterwards with what the test trained into it."""
    root = use_runs(tmp_path / "runs")
    yield root
    state.registry().shutdown(wait=True, timeout=60)  # nothing may still be writing there
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def trained(trained_runs, use_runs) -> tuple[Path, str]:
    root, name = trained_runs
    use_runs(root)
    return root, name
