"""Start the dashboard: ``python app/serve.py`` (what ``make app`` runs).

The same as ``streamlit run app/main.py``, except that

- the server's safety settings (:data:`SAFE_SETTINGS`: this machine only, a 25 MB upload
  limit, no usage statistics, XSRF protection...) are passed on Streamlit's command line,
  so they hold whatever folder the server is started from and whatever a
  ``.streamlit/config.toml`` or ``STREAMLIT_*`` variable there says;
- requests whose ``Host`` header is not a local name get HTTP 403 (a guard against DNS
  rebinding; ``MIST_ALLOWED_HOSTS=name1,name2`` allows more names: see ``app/hostcheck.py``);
- the default demo's training faces are drawn first (about 15 s on a 2-core CPU, once per
  server start), so that Start begins training within seconds however soon it is pressed.
  The test faces follow in the background. ``MIST_WARM_UP=0`` skips this.

Extra arguments go to ``streamlit run`` after the safe settings and so win over them:
``python app/serve.py --server.port 8502``; ``--server.address 0.0.0.0`` deliberately opens
the dashboard to other machines (which must then be allowed in ``MIST_ALLOWED_HOSTS``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hostcheck  # noqa: E402
from streamlit import config  # noqa: E402
from streamlit.web import cli  # noqa: E402
from ui import state  # noqa: E402

#: Start the server anyway after this long (the faces then finish in the background).
MAX_WAIT_S = 120.0

#: Streamlit settings applied whatever the working folder (``.streamlit/config.toml`` holds
#: the same, for a plain ``streamlit run app/main.py`` from the repository root). The port is
#: left to Streamlit (8501, or ``--server.port``, ``STREAMLIT_SERVER_PORT``, a config file).
SAFE_SETTINGS: dict[str, str] = {
    "server.address": "127.0.0.1",  # this machine only
    "server.headless": "true",  # do not try to open a browser
    "server.maxUploadSize": "25",  # MB; photos are checked again before decoding
    "server.enableXsrfProtection": "true",
    "server.enableCORS": "true",
    "server.fileWatcherType": "none",
    "server.runOnSave": "false",
    "browser.gatherUsageStats": "false",
    "browser.serverAddress": "localhost",
    "client.toolbarMode": "viewer",
    "global.developmentMode": "false",
    "theme.base": "light",
}


def streamlit_argv(user_args: list[str], allowed: tuple[str, ...] = ()) -> list[str]:
    """``streamlit run app/main.py`` with :data:`SAFE_SETTINGS` as flags, then the user's
    arguments (click keeps the last value of a repeated option: the user's). Streamlit's own
    WebSocket Host check (``server.allowedHosts``) gets the local names and ``allowed``;
    ``--server.allowedHosts NAME`` on the command line adds to them."""
    flags = [item for name, value in SAFE_SETTINGS.items() for item in (f"--{name}", value)]
    for pattern in hostcheck.streamlit_patterns(allowed):
        flags += ["--server.allowedHosts", pattern]
    return ["streamlit", "run", str(HERE / "main.py"), *flags, *user_args]


def report_settings(allowed: tuple[str, ...]) -> None:
    """Say which settings the server starts with (read back from Streamlit's config) and
    which names besides the local ones the Host check allows."""
    address = config.get_option("server.address")
    upload = config.get_option("server.maxUploadSize")
    stats = config.get_option("browser.gatherUsageStats")
    xsrf = config.get_option("server.enableXsrfProtection")
    others = _not_local(allowed)
    print(
        f"mist: server settings: address={address} "
        f"maxUploadSize={upload}MB gatherUsageStats={str(stats).lower()} "
        f"enableXsrfProtection={str(xsrf).lower()} headless="
        f"{str(config.get_option('server.headless')).lower()}; Host check: local names"
        f"{' and ' + ', '.join(others) if others else ' only'}",
        flush=True,
    )
    if not hostcheck.is_local_name(hostcheck.host_name(address) or ""):
        served = (
            "every name (the Host check is off)"
            if hostcheck.ANY in allowed
            else f"only the names listed in {hostcheck.ENV_VAR} (see app/hostcheck.py)"
        )
        print(
            f"mist: warning: listening on {address}, not only on this machine; other machines"
            f" are served under {served}.",
            flush=True,
        )


def _not_local(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not hostcheck.is_local_name(hostcheck.host_name(name) or "")]


def _draw_the_demo_faces() -> None:
    thread = state.warm_up()
    if thread is None:
        return
    print("mist: drawing the demo's faces before the server starts...", flush=True)
    started = time.monotonic()
    demo = state.default_config()
    while thread.is_alive() and not state.PREPARED.ready(demo):
        if time.monotonic() - started > MAX_WAIT_S:
            break
        time.sleep(0.2)
    print(f"mist: ready in {time.monotonic() - started:.0f} s.", flush=True)


if __name__ == "__main__":
    try:
        allowed = hostcheck.allowed_hosts_from_env()
        hostcheck.install(allowed, on_start=report_settings)
    except (ValueError, RuntimeError) as error:
        print(f"mist: {error}", file=sys.stderr)
        sys.exit(2)
    _draw_the_demo_faces()
    sys.argv = streamlit_argv(sys.argv[1:], allowed)
    sys.exit(cli.main())
