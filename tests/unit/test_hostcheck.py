"""The dashboard's Host check (app/hostcheck.py): which Host headers are served, the
MIST_ALLOWED_HOSTS parsing, the ASGI middleware's answers and its installation into
Streamlit's server. The real server is tried in tests/e2e/test_e2e_safety.py."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "app"))

import hostcheck  # noqa: E402
from hostcheck import (  # noqa: E402
    HostCheckMiddleware,
    allowed_hosts_from_env,
    host_name,
    is_allowed_host,
    streamlit_patterns,
)

LOCAL = [
    "localhost",
    "localhost:8501",
    "LocalHost:8501",
    "LOCALHOST",
    "localhost.",
    "localhost.:8501",
    " localhost:8501 ",
    "localhost:",  # an empty port is allowed by RFC 3986
    "127.0.0.1",
    "127.0.0.1:8501",
    "127.1.2.3:80",
    "[::1]",
    "[::1]:8501",
    "::1",
    "[0:0:0:0:0:0:0:1]:8501",
    "[::ffff:127.0.0.1]:8501",
]

FOREIGN = [
    None,
    "",
    "   ",
    "evil.example",
    "evil.example:8501",
    "EVIL.example.",
    "localhost.evil.example",
    "127.0.0.1.evil.example",
    "evil.localhost",
    "localhost@evil.example",
    "evil.example#localhost",
    "localhost evil.example",
    "local host",
    "localhost\x00",
    "l\u043ecalhost",  # a Cyrillic o
    "localhost:80:80",
    "localhost:abc",
    "localhost:123456",
    "[::1",
    "[::1]x",
    "[::1]:abc",
    "[127.0.0.1]",
    "[localhost]",
    "::",
    "[::]:8501",
    "0.0.0.0",
    "0.0.0.0:8501",
    "192.168.1.5:8501",
    "10.0.0.1",
    "2130706433",  # 127.0.0.1 as one number: not how a browser sends it
    "0x7f000001",
    "127.1",
    "..",
    ".",
]


@pytest.mark.parametrize("host", LOCAL)
def test_local_names_are_served_with_any_port_case_or_trailing_dot(host):
    assert is_allowed_host(host, ())


@pytest.mark.parametrize("host", FOREIGN)
def test_foreign_malformed_or_missing_hosts_are_refused(host):
    assert not is_allowed_host(host, ())


def test_host_name_normalises():
    assert host_name("LocalHost.:8501") == "localhost"
    assert host_name("[::1]:8501") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("MyBox.Lan") == "mybox.lan"
    assert host_name("[::1]:x") is None
    assert host_name(None) is None


def test_allowed_names_addresses_and_domains():
    allowed = ["mybox.lan:8501", "192.168.1.20", "[fe80::1]", ".example.org", "*.corp.net"]
    for host in [
        "mybox.lan",
        "MyBox.LAN.:9999",  # any port, case, trailing dot
        "192.168.1.20:8501",
        "[fe80::1]:8501",
        "example.org",
        "a.b.example.org:443",
        "x.corp.net",
        "localhost:8501",  # local names stay allowed
    ]:
        assert is_allowed_host(host, allowed), host
    for host in [
        "other.lan",
        "mybox.lan.evil.example",
        "192.168.1.21",
        "badexample.org",
        "example.org.evil.example",
        "corp.net",  # '*.' allows the names under it, not the domain itself
        "xcorp.net",
        None,
    ]:
        assert not is_allowed_host(host, allowed), host


def test_a_star_switches_the_check_off():
    assert is_allowed_host("evil.example", ["*"])
    assert is_allowed_host(None, ["mybox.lan", "*"])


def test_allowed_hosts_from_the_environment():
    env = hostcheck.ENV_VAR
    assert allowed_hosts_from_env({}) == ()
    assert allowed_hosts_from_env({env: ""}) == ()
    assert allowed_hosts_from_env({env: "a.lan, b.lan,,[::2] .x.org *.y.org *"}) == (
        "a.lan",
        "b.lan",
        "[::2]",
        ".x.org",
        "*.y.org",
        "*",
    )
    for bad in ["http://a.lan", "a.lan/x", "b.lan@c", "[::1", "a.lan:port"]:
        with pytest.raises(ValueError, match=env) as error:
            allowed_hosts_from_env({env: f"ok.lan,{bad}"})
        assert repr(bad) in str(error.value)


def test_streamlit_patterns_mirror_the_allow_list():
    assert streamlit_patterns() == ("localhost", "127.0.0.1", "::1")
    assert streamlit_patterns(["MyBox.lan:8501", "[fe80::1]", ".x.org", "*.y.org", "*"]) == (
        "localhost",
        "127.0.0.1",
        "::1",
        "mybox.lan",
        "fe80::1",
        "x.org",
        "*.x.org",
        "*.y.org",
        "*",
    )
    # They mean the same to Streamlit's own WebSocket check as the entries mean here.
    from streamlit.web.server.starlette import starlette_websocket

    allowed = ["mybox.lan:8501", ".x.org", "*.y.org"]
    patterns = list(streamlit_patterns(allowed))
    for host in ["localhost:1", "[::1]:1", "mybox.lan", "x.org", "a.x.org", "a.y.org", "y.org"]:
        with_streamlit = _streamlit_allows(starlette_websocket, patterns, host)
        assert with_streamlit == is_allowed_host(host, allowed), host


def _streamlit_allows(module, patterns, host):
    from streamlit import config

    saved = config.get_option("server.allowedHosts")
    config.set_option("server.allowedHosts", patterns)
    try:
        return module.is_host_allowed(host)
    finally:
        config.set_option("server.allowedHosts", saved)


# --- the ASGI middleware, driven by hand (one request each) ---------------------------------


class Recorder:
    """The app behind the check: records that it was called."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def _call(middleware, scope, incoming=()):
    sent: list[dict] = []
    queue = list(incoming)

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    # a thread of its own: Playwright's sync API (the e2e tests, earlier in the same session)
    # leaves an event loop running in the main thread, where asyncio.run refuses to start
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(middleware(scope, receive, send))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    if errors:
        raise errors[0]
    return sent


def _scope(kind: str, *hosts: bytes, path: str = "/") -> dict:
    return {"type": kind, "path": path, "headers": [(b"host", h) for h in hosts]}


def test_middleware_refuses_a_foreign_http_request_with_403_and_a_hint():
    app = Recorder()
    sent = _call(HostCheckMiddleware(app), _scope("http", b"evil.example:8501"))
    assert app.scopes == []
    assert sent[0]["status"] == 403
    body = sent[1]["body"].decode()
    assert "evil.example" in body and hostcheck.ENV_VAR in body


def test_middleware_serves_local_and_allowed_hosts():
    app = Recorder()
    middleware = HostCheckMiddleware(app, ["mybox.lan"])
    for host in [b"localhost:8501", b"[::1]:8501", b"mybox.lan"]:
        sent = _call(middleware, _scope("http", host))
        assert sent[0]["status"] == 200, host
    assert len(app.scopes) == 3


def test_middleware_refuses_missing_or_repeated_host_headers():
    app = Recorder()
    assert _call(HostCheckMiddleware(app), _scope("http"))[0]["status"] == 403
    repeated = _scope("http", b"localhost", b"evil.example")
    assert _call(HostCheckMiddleware(app), repeated)[0]["status"] == 403
    assert app.scopes == []


def test_middleware_closes_a_foreign_websocket_before_accepting_it():
    app = Recorder()
    scope = _scope("websocket", b"evil.example", path="/_stcore/stream")
    sent = _call(HostCheckMiddleware(app), scope, [{"type": "websocket.connect"}])
    assert app.scopes == []
    assert sent == [{"type": "websocket.close", "code": 1008}]  # the server answers 403
    scope = _scope("websocket", b"localhost:8501", path="/_stcore/stream")
    _call(HostCheckMiddleware(app), scope, [{"type": "websocket.connect"}])
    assert [s["type"] for s in app.scopes] == ["websocket"]


def test_middleware_passes_lifespan_events():
    app = Recorder()
    _call(HostCheckMiddleware(app), {"type": "lifespan"})
    assert app.scopes == [{"type": "lifespan"}]


# --- installation into Streamlit's server ---------------------------------------------------


def test_install_wraps_the_app_streamlit_builds(monkeypatch):
    from streamlit import config
    from streamlit.web.server.starlette import starlette_server

    inner = Recorder()
    monkeypatch.setattr(starlette_server, "create_starlette_app", lambda runtime: inner)
    configured = ["localhost", "127.0.0.1", "::1", "mybox.lan", "st.lan"]  # as serve.py sets
    monkeypatch.setattr(
        config, "get_option", lambda key: configured if key == "server.allowedHosts" else None
    )
    seen: list[tuple[str, ...]] = []
    hostcheck.install(["mybox.lan"], on_start=seen.append)
    hostcheck.install(["mybox.lan"], on_start=seen.append)  # twice: wrapped once
    app = starlette_server.create_starlette_app(object())
    assert isinstance(app, HostCheckMiddleware) and app.app is inner
    assert seen == [("mybox.lan", "st.lan")]  # server.allowedHosts is honoured too
    assert _call(app, _scope("http", b"st.lan"))[0]["status"] == 200
    assert _call(app, _scope("http", b"evil.example"))[0]["status"] == 403


def test_install_refuses_a_streamlit_it_cannot_guard(monkeypatch):
    from streamlit.web.server.starlette import starlette_server

    monkeypatch.delattr(starlette_server, "create_starlette_app")
    with pytest.raises(RuntimeError, match="Host check"):
        hostcheck.install()
