"""The dashboard's demo from Start to finished, in a real browser.

    python -m bench.dashboard_demo [--precision float32] [--write-readme]

Starts the dashboard as ``make app`` does (``app/serve.py``, the default demo's faces drawn
in the background at start-up) on a scratch runs folder, opens the Train page in headless
Chromium, sets the arithmetic (float32 by default, as ``bench.demo_speed`` runs the CLI),
waits until the faces are ready as a person would not (so the figure is the training's,
not the start-up's), presses **Start** and times until the job has finished, calibration
included (Start is enabled again). Prints the seconds, the run's MI and the CPU. Needs
/usr/bin/chromium (``bash tests/e2e/install_chromium.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import cpu_model
from bench.record import environment, write_readme_block
from bench.results_page import CHROMIUM, CHROMIUM_ARGS, ROOT, _wait_until_up

#: How the Train page names the arithmetic choices (app/ui/labels.py).
PRECISION_LABELS = {
    "float32": "32-bit (exact, reproducible)",
    "auto": "Automatic (16-bit where fast)",
}
#: What the Train page says while the default demo's faces are still being drawn.
DRAWING = "Drawing the demo's faces in the background"


def _idle(page) -> None:
    page.wait_for_function(
        """() => {
            const s = document.querySelector('[data-testid="stStatusWidget"]');
            return !s || !/running/i.test(s.innerText);
        }""",
        timeout=120_000,
    )


def measure(precision: str) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="mist-dashboard-demo-"))
    port = 8600 + os.getpid() % 300
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"MIST_RUNS_DIR": str(work / "runs")}
    log = (work / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "app/serve.py", "--server.port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_up(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            for _ in range(120):  # until the start-up has drawn the faces (a page run says so)
                page.goto(url)
                page.locator("h1").first.wait_for(timeout=120_000)
                _idle(page)
                if page.get_by_text(DRAWING).count() == 0:
                    break
                time.sleep(5)
            if precision != "auto":
                page.get_by_text("Advanced settings").click()
                box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Arithmetic")
                for attempt in range(5):  # a page rerun (a fragment's timer) can close the list
                    box.get_by_role("combobox").click()
                    try:
                        page.get_by_role("option", name=PRECISION_LABELS[precision]).click(
                            timeout=5_000
                        )
                        break
                    except PlaywrightTimeout:
                        if attempt == 4:
                            raise
                _idle(page)
            start = page.locator(".st-key-start button")
            start.click()
            began = time.perf_counter()
            page.wait_for_function(
                "() => document.querySelector('.st-key-start button')?.disabled === true",
                timeout=60_000,
            )
            page.wait_for_function(
                "() => document.querySelector('.st-key-start button')?.disabled === false",
                timeout=1_800_000,
                polling=500,
            )
            seconds = time.perf_counter() - began
            browser.close()
        [run] = list((work / "runs").iterdir())
        summary = json.loads((run / "summary.json").read_text())
        status = json.loads((run / "status.json").read_text())
        mi: dict[str, list[float]] = {}
        for row in summary["mi"]:
            mi.setdefault(row["encoder"], []).append(row["mi"])
        means = {encoder: sum(v) / len(v) for encoder, v in mi.items()}
        return {"seconds": seconds, "mi": means, "message": status.get("message", "")}
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_demo", description=__doc__)
    parser.add_argument("--precision", default="float32", choices=sorted(PRECISION_LABELS))
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.precision)
    mi = ", ".join(f"{encoder} {value:.2f}" for encoder, value in result["mi"].items())
    text = (
        f"The dashboard's demo (`python -m bench.dashboard_demo --precision {args.precision}`): "
        f"Start to finished (calibration included) {result['seconds']:.1f} s; mean MI {mi} "
        f"nats; the job's last message: {result['message']!r}.\n\n"
        f"Machine: {cpu_model()}; {environment(threads=False)}; headless Chromium."
    )
    print(text)
    if args.write_readme:
        write_readme_block("dashboard-demo", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
