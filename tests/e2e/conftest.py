"""End-to-end fixtures: a real dashboard server (``python app/serve.py``, as ``make app``
starts it) on a free port, and a headless Chromium driven by Playwright (Debian's
/usr/bin/chromium; never ``playwright install``, which downloads).

The server writes its runs to a temporary folder that already holds one tiny trained run
(trained here, without the app, in a few seconds). Screenshots go to tests/e2e/screenshots/.
``launch`` starts more servers (another folder, other settings) for a test; Chromium
resolves ``evil.example`` to 127.0.0.1, as a DNS-rebinding page would have it.
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
#: A foreign name that Chromium resolves to 127.0.0.1 (the dashboard must refuse it).
REBOUND_NAME = "evil.example"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    # A DNS-rebinding page in one line: its name now points at this machine.
    f"--host-resolver-rules=MAP {REBOUND_NAME} 127.0.0.1",
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
        assert snap.message == "finished", f"the fixture's run: {snap.message}"  # calibrated
        return snap.run_name
    finally:
        torch.set_num_threads(saved)


class Server:
    """A running ``app/serve.py``: ``url`` (http://127.0.0.1:PORT), ``port``, its runs
    folder (and the name of the run trained there, if any), its log file, its process."""

    def __init__(
        self,
        url: str,
        runs: Path,
        run_name: str | None,
        log: Path,
        process: subprocess.Popen | None = None,
    ) -> None:
        self.url, self.runs, self.run_name, self.log = url, runs, run_name, log
        self.port = int(url.rsplit(":", 1)[1])
        self.process = process


def start_serve(
    runs: Path,
    log: Path,
    args: list[str],
    *,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``python app/serve.py ARGS`` (what ``make app`` runs) from ``cwd``, without the demo's
    warm-up, writing its runs to ``runs`` and its output to ``log``; in its own process
    group (``stop_serve`` tears it down as a whole)."""
    env = (
        os.environ
        | {
            "MIST_RUNS_DIR": str(runs),
            "MIST_WARM_UP": "0",  # do not draw the default demo's 2,500 faces
            "OMP_NUM_THREADS": "1",
        }
        | (env or {})
    )
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "app" / "serve.py"), *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    """Until ``url``/_stcore/health answers 200 (fails the test if the server exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"app/serve.py exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no answer on /_stcore/health within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


def stop_serve(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``python app/serve.py`` (as ``make app``) on a free port; its runs folder holds one
    trained run."""
    _chromium_or_skip()
    runs = tmp_path_factory.mktemp("e2e-runs")
    run_name = _train_tiny_run(runs)
    port = _free_port()
    log = tmp_path_factory.mktemp("e2e-server") / "streamlit.log"
    # As `make app` starts it, on another port: serve.py applies the safety settings itself.
    process = start_serve(runs, log, ["--server.port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url, log)
        yield Server(url, runs, run_name, log, process)
    finally:
        stop_serve(process)
        shutil.rmtree(runs, ignore_errors=True)  # checkpoints: ~140 MB a run


@pytest.fixture
def launch(tmp_path):
    """Start more ``app/serve.py`` servers in a test: ``launch(cwd=..., env=..., args=[...])``
    returns a :class:`Server` once it answers (a free port is added to ``args``); every
    server is stopped when the test ends."""
    started: list[subprocess.Popen] = []

    def start(
        *, cwd: Path = ROOT, env: dict[str, str] | None = None, args: list[str] = ()
    ) -> Server:
        n = len(started)
        runs, log = tmp_path / f"runs-{n}", tmp_path / f"serve-{n}.log"
        port = _free_port()
        process = start_serve(runs, log, [*args, "--server.port", str(port)], cwd=cwd, env=env)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(process, url, log)
        return Server(url, runs, None, log, process)

    try:
        yield start
    finally:
        for process in started:
            stop_serve(process)


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
