"""How long the Results page takes with many runs in the store, in a real browser.

    python -m bench.results_page [--runs 50] [--visits 5] [--select 3] [--write-readme]

Trains one tiny run (a few seconds), copies it ``--runs`` times into a scratch store (other
seeds, learning rates, notes and tags; checkpoints left out: Results does not read them),
starts the dashboard as ``make app`` does (``app/serve.py``) on that store, and opens
``/results`` in headless Chromium with ``--select`` runs in the URL (the curves, bars and
table of the settings that differ are drawn). It prints the seconds until every chart is
drawn and no script runs: the first visit (the server's caches cold); later visits from
the sidebar (the way a person comes back to the page); reloads of the URL (the browser
fetches and starts the app again); and the page's script alone (AppTest, server side).
Needs /usr/bin/chromium (``bash tests/e2e/install_chromium.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import torch

from bench.machine import cpu_model
from bench.record import environment, write_readme_block

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]
TINY = dict(
    train_size=48,
    test_size=16,
    image_size=(40, 32),
    batch_size=8,
    epochs=2,
    valid_fraction=0.0,
    encoders=("random_init", "trained"),
)


def _tiny_run(root: Path) -> str:
    from mist_core.experiment import preset
    from mist_core.jobs import JobRegistry

    torch.set_num_threads(1)
    job = JobRegistry(root).submit(preset("demo-cpu", **TINY))
    if not job.wait(timeout=600) or job.snapshot().state.value != "finished":
        raise RuntimeError(f"the tiny run did not finish: {job.snapshot().message}")
    return job.snapshot().run_name


def fill_store(root: Path, n: int) -> list[str]:
    """``n`` finished runs in ``root`` (copies of one tiny run with other settings), newest
    last; their names."""
    source_root = root.parent / "source-run"
    name = _tiny_run(source_root)
    source = source_root / name
    names = []
    for i in range(n):
        target = root / f"run-{i:03d}"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
        config = json.loads((target / "config.json").read_text())
        config["seed"] = i % 3
        config["lr"] = [5e-4, 1e-3, 2e-3][(i // 3) % 3]
        (target / "config.json").write_text(json.dumps(config))
        status = json.loads((target / "status.json").read_text())
        status["created"] = status.get("created", time.time()) + i
        (target / "status.json").write_text(json.dumps(status))
        notes = {"note": f"copy {i} of the tiny run", "tags": ["bench", f"lr{i % 3}"]}
        (target / "notes.json").write_text(json.dumps(notes))
        names.append(target.name)
    shutil.rmtree(source_root, ignore_errors=True)
    return names


def _serve(runs: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"MIST_RUNS_DIR": str(runs), "MIST_WARM_UP": "0"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "app/serve.py", "--server.port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process


def _wait_until_up(url: str, timeout: float = 90) -> None:
    import urllib.request

    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the dashboard at {url} did not answer within {timeout:.0f} s")


#: Every chart of the Results page with runs selected: curves, compared bars, and the run
#: in detail's bars and calibration.
CHARTS = 4
_DRAWN = """n => {
    const s = document.querySelector('[data-testid="stStatusWidget"]');
    const title = document.querySelector('h1');
    const drawn = [...document.querySelectorAll('.js-plotly-plot')]
        .filter(plot => plot.querySelector('.trace')).length;
    return title && /Results/.test(title.innerText) && (!s || !/running/i.test(s.innerText))
        && drawn >= n;
}"""


def _until_drawn(page, start: float) -> float:
    page.wait_for_function(_DRAWN, arg=CHARTS, timeout=120_000, polling=50)
    return time.perf_counter() - start


def _visit(page, address: str) -> float:
    """Seconds from a page load (the browser fetches the app again: a reload, a pasted
    link) until every chart is drawn and no script runs."""
    start = time.perf_counter()
    page.goto(address)
    return _until_drawn(page, start)


def _switch(page) -> float:
    """Seconds from a click on Results in the sidebar (from About, no reload) until every
    chart is drawn and no script runs."""
    page.get_by_role("link", name="About").first.click()
    page.wait_for_function("() => /About/.test(document.querySelector('h1')?.innerText)")
    start = time.perf_counter()
    page.get_by_role("link", name="Results").first.click()
    return _until_drawn(page, start)


def _script_seconds(runs: Path, names: list[str], repeats: int) -> list[float]:
    """The Results page's script alone (AppTest, in this process): seconds per run after
    the first."""
    os.environ.update(MIST_RUNS_DIR=str(runs), MIST_WARM_UP="0")
    sys.path.insert(0, str(ROOT / "app"))
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    app.query_params["run"] = names
    app.run()
    app.switch_page("views/results.py").run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        app.run()
        seconds.append(time.perf_counter() - start)
    if app.exception:
        raise RuntimeError(f"the Results page failed: {app.exception[0].message}")
    return seconds


def measure(n_runs: int, visits: int, select: int) -> dict:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="mist-results-bench-"))
    try:
        names = fill_store(work / "runs", n_runs)
        port = 8600 + os.getpid() % 300
        url = f"http://127.0.0.1:{port}"
        process = _serve(work / "runs", port, work / "serve.log")
        try:
            _wait_until_up(url)
            query = urlencode([("run", name) for name in names[-select:]])
            address = f"{url}/results?{query}"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
                )
                page = browser.new_page(viewport={"width": 1400, "height": 3400})
                loads = [_visit(page, address) for _ in range(visits + 1)]
                switches = [_switch(page) for _ in range(visits)]
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
        script = _script_seconds(work / "runs", names[-select:], visits)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "runs": n_runs,
        "selected": select,
        "first": loads[0],
        "loads": loads[1:],
        "switches": switches,
        "script": script,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--visits", type=int, default=5, help="visits after the first")
    parser.add_argument("--select", type=int, default=3, help="runs selected in the URL")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.runs, args.visits, args.select)

    def spread(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f} s (max {max(values):.2f} s)"

    text = (
        f"Results page with {result['runs']} runs in the store, {result['selected']} selected "
        f"(`python -m bench.results_page`, {len(result['script'])} repeats; seconds until "
        "all 4 charts are drawn and no script runs):\n\n"
        f"- the page's script alone (server side): {spread(result['script'])}\n"
        f"- opening Results from the sidebar after the first visit: "
        f"{spread(result['switches'])}\n"
        f"- loading the page's URL again (a reload: the browser fetches the app too): "
        f"{spread(result['loads'])}; the very first visit {result['first']:.2f} s\n\n"
        f"Machine: {cpu_model()}; {environment(threads=False)}; headless Chromium."
    )
    print(text)
    if args.write_readme:
        write_readme_block("results-page", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
