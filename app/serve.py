"""Start the dashboard: ``python app/serve.py`` (what ``make app`` runs).

The same as ``streamlit run app/main.py``, except that the default demo's faces start being
drawn as the server starts rather than when the first page is opened, so that pressing
Start soon after opening the page begins training at once. Extra arguments go to
``streamlit run`` (e.g. ``--server.port 8502``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from streamlit.web import cli  # noqa: E402
from ui import state  # noqa: E402

if __name__ == "__main__":
    state.warm_up()
    sys.argv = ["streamlit", "run", str(HERE / "main.py"), *sys.argv[1:]]
    sys.exit(cli.main())
