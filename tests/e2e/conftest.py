"""End-to-end fixtures: a real dashboard server (``python app/serve.py``, as ``make app``
starts it) on a free port, and a headless Chromium driven by Playwright (Debian's
/usr/bin/chromium; never ``playwright install``, which downloads).

The server writes its runs to a temporary folder that already holds one tiny trained run
(trained here, without the app, in a few seconds). Screenshots go to tests/e2e/screenshots/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = Path(__file__).with_name("install_chromium.sh")
SCREENSHOTS = Path(__file__).with_name("screenshots")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]
#: Tall: Streamlit scrolls inside its main container, so a screenshot shows the viewport.
VIEWPORT = {"width": 1400, "height": 2200}
TINY = dict(
    train_size=48,
    test_size=16,
    image_size=(40, 32),
    batch_size=8,
    epochs=1,
    valid_fraction=0.0,
    encoders=("random_init", "trained"),
)


def pytest_configure(config):
    # Registered here so that --strict-markers accepts it without touching pyproject.toml.
    config.addinivalue_line("markers", "e2e: end-to-end test in headless Chromium (slow)")


def _chromium_or_skip() -> None:
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(INSTALL)], check=False, timeout=600)
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing and could not be installed (tests/e2e/install_chromium.sh "
            "needs root, apt-get and a network); install Debian's chromium to run the e2e tests"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_tiny_run(root: Path) -> str:
    from mist_core.experiment import preset
    from mist_core.jobs import JobRegistry

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: OpenMP spinning against others costs 10x
    try:
        job = JobRegistry(root).submit(preset("demo-cpu", **TINY))
        assert job.wait(timeout=300), "the fixture's tiny training did not end within 5 min"
        snap = job.snapshot()
        assert snap.state.value == "finished", f"the fixture's training failed: {snap.error}"
        return snap.run_name
    finally:
        torch.set_num_threads(saved)


def _flags(**server: object) -> list[str]:
    return [item for name, value in server.items() for item in (f"--server.{name}", str(value))]


class Server:
    def __init__(self, url: str, runs: Path, run_name: str, log: Path) -> None:
        self.url, self.runs, self.run_name, self.log = url, runs, run_name, log


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``python app/serve.py`` (as ``make app``) on a free port; its runs folder holds one
    trained run."""
    _chromium_or_skip()
    runs = tmp_path_factory.mktemp("e2e-runs")
    run_name = _train_tiny_run(runs)
    port = _free_port()
    env = os.environ | {
        "MIST_RUNS_DIR": str(runs),
        "MIST_WARM_UP": "0",  # do not draw the default demo's 2,500 faces
        "OMP_NUM_THREADS": "1",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    log = tmp_path_factory.mktemp("e2e-server") / "streamlit.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "app/serve.py",  # what `make app` runs (`streamlit run app/main.py` inside)
                *_flags(port=port, address="127.0.0.1", headless="true", fileWatcherType="none"),
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: torn down as a whole
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer on /_stcore/health within 90 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield Server(url, runs, run_name, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        shutil.rmtree(runs, ignore_errors=True)  # checkpoints: ~140 MB a run


@pytest.fixture(scope="session")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(request, browser, server):
    """A fresh browser tab (1400 x 2200). On failure: a FAILED-<test>.png screenshot and the
    end of the server's log."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield page
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            SCREENSHOTS.mkdir(exist_ok=True)
            shot = SCREENSHOTS / f"FAILED-{request.node.name}.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
            except Exception as error:  # noqa: BLE001 - a dead page must not hide the failure
                shot = f"(no screenshot: {error})"
            print(f"\n--- e2e failure: {shot}; end of the streamlit log ---")
            print(server.log.read_text(errors="replace")[-4000:])
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshot():
    SCREENSHOTS.mkdir(exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (the server log is printed on failure)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
