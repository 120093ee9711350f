"""The dashboard server's safety, against real ``app/serve.py`` processes: requests whose
Host is not a local name get 403 (plain HTTP and the WebSocket upgrade; a DNS-rebinding
guard, app/hostcheck.py), in raw HTTP and in Chromium; and the safety settings (this
machine only, 25 MB uploads, no usage statistics) hold when the server is started from
another folder whose own Streamlit config and environment say otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: Chromium resolves this name to 127.0.0.1 (tests/e2e/conftest.py: CHROMIUM_ARGS).
REBOUND_NAME = "evil.example"

FOREIGN = [REBOUND_NAME, f"{REBOUND_NAME}:{{port}}", "localhost.evil.example", "0.0.0.0"]
LOCAL = ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST"]
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def request(port: int, path: str, host: str | None, method: str = "GET") -> tuple[int, str]:
    """One HTTP/1.1 request to 127.0.0.1:port with exactly this Host header (none: None,
    then as HTTP/1.0, which may omit it)."""
    if host is None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"{method} {path} HTTP/1.0\r\n\r\n".encode())
            reply = _read_all(sock)
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host)
        if method in ("PUT", "POST"):
            connection.putheader("Content-Length", "0")
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        connection.close()


def upgrade(port: int, host: str, origin: str) -> tuple[int, str]:
    """A raw WebSocket handshake on /_stcore/stream as a browser sends it: the status and
    the reply's head. A 101 is checked to carry the right Sec-WebSocket-Accept."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                "GET /_stcore/stream HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Origin: {origin}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: streamlit\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    text = head.decode(errors="replace")
    status = int(text.split()[1])
    if status == 101:
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert f"sec-websocket-accept: {accept}".lower() in text.lower(), text
    return status, text


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _static_asset(port: int) -> str:
    status, html = request(port, "/", f"localhost:{port}")
    assert status == 200
    found = re.search(r"""(?:src|href)="\.?/?(static/[^"]+\.(?:js|css))""", html)
    assert found, html[:500]
    return "/" + found.group(1)


# --- 1. plain requests ------------------------------------------------------------------------


def test_plain_requests_with_a_foreign_host_get_403(server):
    port = server.port
    paths = [
        "/",
        "/results",
        "/_stcore/health",
        "/_stcore/host-config",
        _static_asset(port),
        "/media/nothing.png",
        "/favicon.png",
    ]
    tried = held = 0
    for host in [*[h.format(port=port) for h in FOREIGN], None]:
        for path in paths:
            status, body = request(port, path, host)
            tried += 1
            assert status == 403, f"{path} with Host {host!r}: {status} {body[:200]}"
            assert "not a local name" in body
            held += 1
    status, _ = request(port, "/_stcore/upload_file/x/y", REBOUND_NAME, method="PUT")
    tried, held = tried + 1, held + (status == 403)
    print(f"\nforeign Host, plain requests: {held} of {tried} refused with 403")
    assert status == 403
    assert "refused a http request" in server.log.read_text(errors="replace")


def test_plain_requests_with_a_local_host_are_served(server):
    port = server.port
    asset = _static_asset(port)
    for host in [h.format(port=port) for h in LOCAL]:
        for path in ["/", "/_stcore/health", asset]:
            status, body = request(port, path, host)
            assert status == 200, f"{path} with Host {host!r}: {status} {body[:200]}"


# --- 2. the WebSocket upgrade -----------------------------------------------------------------


def test_a_websocket_upgrade_with_a_foreign_host_gets_403(server):
    port = server.port
    cases = [
        (REBOUND_NAME, f"http://{REBOUND_NAME}"),  # a rebound page: Origin matches Host
        (f"{REBOUND_NAME}:{port}", f"http://{REBOUND_NAME}:{port}"),
        (f"{REBOUND_NAME}:{port}", f"http://localhost:{port}"),
    ]
    for host, origin in cases:
        status, head = upgrade(port, host, origin)
        assert status == 403, f"Host {host!r}, Origin {origin!r}:\n{head}"
    print(f"\nforeign Host, WebSocket upgrades: {len(cases)} of {len(cases)} refused with 403")


def test_a_websocket_upgrade_with_a_local_host_switches_protocols(server):
    port = server.port
    for host in [f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"]:
        status, head = upgrade(port, host, f"http://{host}")
        assert status == 101, f"Host {host!r}:\n{head}"


# --- in Chromium: the page loads through localhost, a rebound name is refused -----------------


def test_in_chromium_localhost_loads_and_a_rebound_name_is_refused(page, server):
    port = server.port
    page.goto(f"http://localhost:{port}/")
    page.get_by_role("heading", name="Train").first.wait_for(timeout=90_000)
    assert not page.js_errors, page.js_errors
    # The app's own WebSocket is up: a second one from this page opens too.
    probe = """url => new Promise(done => {
        const ws = new WebSocket(url, ["streamlit"]);
        ws.onopen = () => { ws.close(); done("open"); };
        ws.onerror = () => done("refused");
    })"""
    assert page.evaluate(probe, f"ws://localhost:{port}/_stcore/stream") == "open"
    assert page.evaluate(probe, f"ws://{REBOUND_NAME}:{port}/_stcore/stream") == "refused"
    # A page under a name rebound to 127.0.0.1 gets 403, not the dashboard.
    reply = page.goto(f"http://{REBOUND_NAME}:{port}/")
    assert reply is not None and reply.status == 403
    assert "not a local name" in page.content()


# --- 3. settings whatever the folder ----------------------------------------------------------

HOSTILE_TOML = """\
[server]
address = "0.0.0.0"
maxUploadSize = 200
enableXsrfProtection = false
[browser]
gatherUsageStats = true
"""
HOSTILE_ENV = {
    "STREAMLIT_SERVER_ADDRESS": "0.0.0.0",
    "STREAMLIT_SERVER_MAX_UPLOAD_SIZE": "200",
    "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "true",
}


def listening_addresses(port: int) -> list[str]:
    """The local addresses of the TCP sockets listening on ``port`` (/proc/net/tcp{,6})."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                assert len(address) == width
                # /proc shows each 32-bit word in host (little-endian) order.
                words = [address[i : i + 8] for i in range(0, width, 8)]
                raw = b"".join(bytes.fromhex(w)[::-1] for w in words)
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                found.append(socket.inet_ntop(family, raw))
    return found


def other_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (may be none in a sandbox)."""
    found = set()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing address
            found.add(probe.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127.") and a != "0.0.0.0")


def session_settings(port: int, page_name: str = "photo") -> dict:
    """Open a Streamlit session over the WebSocket, run ``page_name`` and read what the
    server tells the browser: usage statistics, toolbar mode, the uploader's limit."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    seen: dict = {"uploaders": []}
    rerun = BackMsg()
    rerun.rerun_script.page_name = page_name
    rerun.rerun_script.query_string = ""
    url = f"ws://127.0.0.1:{port}/_stcore/stream"
    with connect(url, subprotocols=["streamlit"], open_timeout=15) as ws:
        ws.send(rerun.SerializeToString())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = ForwardMsg()
            message.ParseFromString(ws.recv(timeout=60))
            kind = message.WhichOneof("type")
            if kind == "new_session":
                config = message.new_session.config
                seen["gatherUsageStats"] = config.gather_usage_stats
                seen["toolbarMode"] = config.toolbar_mode
            elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                element = message.delta.new_element
                if element.WhichOneof("type") == "file_uploader":
                    seen["uploaders"].append(element.file_uploader.max_upload_size_mb)
            elif kind == "script_finished":
                return seen
    raise AssertionError(f"the {page_name} page did not finish within 60 s: {seen}")


def test_serve_from_another_folder_keeps_the_safe_settings(launch, tmp_path):
    folder = tmp_path / "elsewhere"
    (folder / ".streamlit").mkdir(parents=True)
    (folder / ".streamlit" / "config.toml").write_text(HOSTILE_TOML)
    # Control: that folder's config (and the environment) would make Streamlit unsafe.
    control = subprocess.run(
        [
            sys.executable,
            "-c",
            "from streamlit import config as c; c.get_config_options(force_reparse=True); "
            "print(c.get_option('server.address'), c.get_option('server.maxUploadSize'), "
            "c.get_option('browser.gatherUsageStats'))",
        ],
        cwd=folder,
        env=os.environ | HOSTILE_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert control.stdout.split() == ["0.0.0.0", "200", "True"], control

    server = launch(cwd=folder, env=HOSTILE_ENV)
    addresses = listening_addresses(server.port)
    print(f"\nserve.py from {folder}: listening on {addresses}")
    assert addresses and set(addresses) <= {"127.0.0.1"}, addresses
    for address in other_addresses():
        with pytest.raises(OSError):
            socket.create_connection((address, server.port), timeout=3).close()
    seen = session_settings(server.port)
    assert seen["gatherUsageStats"] is False, seen
    assert seen["uploaders"] == [25], seen  # the Photo page's uploader: 25 MB
    from streamlit.proto.NewSession_pb2 import Config

    assert seen["toolbarMode"] == Config.ToolbarMode.VIEWER, seen
    log = server.log.read_text(errors="replace")
    assert "address=127.0.0.1" in log and "maxUploadSize=25MB" in log, log
    assert "gatherUsageStats=false" in log and "enableXsrfProtection=true" in log, log
    # The Host check is on there too.
    assert request(server.port, "/_stcore/health", REBOUND_NAME)[0] == 403
    assert request(server.port, "/_stcore/health", f"localhost:{server.port}")[0] == 200


def test_the_command_line_still_overrides_and_names_can_be_allowed(launch):
    server = launch(
        env={"MIST_ALLOWED_HOSTS": "mybox.lan,.example.org"},
        args=["--server.maxUploadSize", "7", "--server.allowedHosts", "st.lan"],
    )
    log = server.log.read_text(errors="replace")
    assert "maxUploadSize=7MB" in log, log
    assert "mybox.lan, .example.org, st.lan" in log, log
    for host, expected in [
        ("mybox.lan", 200),
        (f"a.example.org:{server.port}", 200),
        ("st.lan", 200),
        (REBOUND_NAME, 403),
    ]:
        assert request(server.port, "/_stcore/health", host)[0] == expected, host
    # The WebSocket too (Streamlit's own Host check there got the same names).
    for host, expected in [
        (f"mybox.lan:{server.port}", 101),
        (f"a.example.org:{server.port}", 101),
        (f"st.lan:{server.port}", 101),
        (f"localhost:{server.port}", 101),
        (f"{REBOUND_NAME}:{server.port}", 403),
    ]:
        assert upgrade(server.port, host, f"http://{host}")[0] == expected, host


def test_a_bad_allow_list_stops_the_server_with_a_message(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "app" / "serve.py")],
        cwd=tmp_path,
        env=os.environ | {"MIST_ALLOWED_HOSTS": "ok.lan,http://bad/", "MIST_WARM_UP": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result
    assert "MIST_ALLOWED_HOSTS" in result.stderr and "'http://bad/'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_safe_settings_match_the_repository_config():
    sys.path.insert(0, str(ROOT / "app"))
    import serve

    toml = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    flat = {
        f"{section}.{key}": value
        for section, table in toml.items()
        for key, value in table.items()
    }
    for name, value in serve.SAFE_SETTINGS.items():
        assert name in flat, f"{name} is missing from .streamlit/config.toml"
        assert str(flat[name]).lower() == value.lower(), name
    assert tuple(flat["server.allowedHosts"]) == serve.hostcheck.LOCAL_NAMES
    argv = serve.streamlit_argv(["--server.port", "8502", "--server.address", "0.0.0.0"])
    from streamlit.web import cli

    params = cli.main_run.make_context("run", argv[2:]).params
    assert params["server_port"] == 8502 and params["server_address"] == "0.0.0.0"
    assert params["server_maxUploadSize"] == 25 and params["browser_gatherUsageStats"] is False
    assert params["server_allowedHosts"] == ("localhost", "127.0.0.1", "::1")
