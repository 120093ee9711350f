"""Start the dashboard: ``python app/serve.py`` (what ``make app`` runs).

The same as ``streamlit run app/main.py``, except that the default demo's training faces
are drawn first (about 15 s on a 2-core CPU, once per server start), so that Start begins
training within seconds however soon it is pressed. The test faces follow in the
background. Extra arguments go to ``streamlit run`` (e.g. ``--server.port 8502``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from streamlit.web import cli  # noqa: E402
from ui import state  # noqa: E402

#: Start the server anyway after this long (the faces then finish in the background).
MAX_WAIT_S = 120.0


def _draw_the_demo_faces() -> None:
    thread = state.warm_up()
    if thread is None:
        return
    print("mist: drawing the demo's faces before the server starts...", flush=True)
    started = time.monotonic()
    config = state.default_config()
    while thread.is_alive() and not state.PREPARED.ready(config):
        if time.monotonic() - started > MAX_WAIT_S:
            break
        time.sleep(0.2)
    print(f"mist: ready in {time.monotonic() - started:.0f} s.", flush=True)


if __name__ == "__main__":
    _draw_the_demo_faces()
    sys.argv = ["streamlit", "run", str(HERE / "main.py"), *sys.argv[1:]]
    sys.exit(cli.main())
