"""The dashboard's Host check: a guard against DNS rebinding.

A web page the user visits can point its own DNS name at 127.0.0.1 once loaded; its scripts
then reach the dashboard under the page's own origin (so the same-origin and XSRF checks
pass) and could start trainings or read results. Such requests carry the page's name in
their ``Host`` header, so the server answers them with HTTP 403 (as Jupyter does): only
requests addressed to a local name are served, plain HTTP (pages, static files,
``/_stcore/health``...) and the WebSocket upgrade (``/_stcore/stream``) alike.

Local names: ``localhost`` and loopback addresses (``127.0.0.1`` and the rest of
127.0.0.0/8, ``::1`` bare or as ``[::1]``), with any port, in any case, with or without a
trailing dot. ``app/serve.py`` also sets Streamlit's own WebSocket Host check
(``server.allowedHosts``) to ``localhost``, ``127.0.0.1``, ``::1`` and the allowed names
(:func:`streamlit_patterns`): a second guard on the WebSocket, which also holds for a plain
``streamlit run app/main.py`` from the repository root (``.streamlit/config.toml``).

**Allowing other names** (e.g. to reach the dashboard through a reverse proxy or from
another machine, after ``--server.address 0.0.0.0``): list them, separated by commas, in
the environment variable ``MIST_ALLOWED_HOSTS``::

    MIST_ALLOWED_HOSTS=mybox.lan,192.168.1.20 python app/serve.py --server.address 0.0.0.0

An entry is a host name or an IP address (ports are ignored: ``mybox.lan:8501`` allows
``mybox.lan`` on any port); ``.example.org`` or ``*.example.org`` allows the names under
``example.org`` (the first one ``example.org`` itself too); ``*`` switches the check off
(every Host is served; only for a trusted network). Names in Streamlit's own setting
``server.allowedHosts`` (``--server.allowedHosts NAME``, or a config.toml) are allowed as
well; note that once that setting is non-empty Streamlit itself refuses WebSocket
connections from any other name, ``localhost`` included, so list ``localhost`` there too.

``app/serve.py`` installs the check (:func:`install`) before the server starts; Streamlit's
``AppTest`` does not go through the server and is not affected.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

__all__ = [
    "ANY",
    "ENV_VAR",
    "HostCheckMiddleware",
    "LOCAL_NAMES",
    "allowed_hosts_from_env",
    "host_name",
    "install",
    "is_allowed_host",
    "is_local_name",
    "streamlit_patterns",
]

LOG = logging.getLogger("mist.hostcheck")

#: The environment variable that lists extra names to serve (comma-separated).
ENV_VAR = "MIST_ALLOWED_HOSTS"
#: Allow every Host (switches the check off).
ANY = "*"
#: The local names as Streamlit's ``server.allowedHosts`` spells them.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

#: A host name's characters (letters, digits, '-', '_', '.'); IP literals are parsed apart.
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{0,5}")
#: Refused Hosts are logged once each, up to this many (a hostile page may send many).
_MAX_LOGGED = 50

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(host: str | None) -> str | None:
    """The name in a ``Host`` header value (or an allow-list entry), normalised.

    ``"LocalHost:8501"`` -> ``"localhost"``; ``"[::1]:8501"`` and ``"::1"`` -> ``"::1"``;
    ``"localhost."`` -> ``"localhost"``. None when the value is missing, empty or malformed
    (a bad port, stray characters, an unclosed bracket, several names).
    """
    if host is None:
        return None
    text = host.strip().lower()
    if not text:
        return None
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[1:end], text[end + 1 :]
        if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
            return None
        return name if _ip(name) is not None and ":" in name else None
    if text.count(":") > 1:  # a bare IPv6 address (it cannot carry a port)
        return text if _ip(text) is not None else None
    name, _, port = text.partition(":")
    if not _PORT.fullmatch(port):
        return None
    if name.endswith("."):
        name = name[:-1]
    if not _NAME.fullmatch(name) or ".." in name:
        return None
    return name


def is_local_name(name: str) -> bool:
    """Whether a normalised name (see :func:`host_name`) is this machine's own:
    ``localhost`` or a loopback address (127.0.0.0/8, ``::1``, ``::ffff:127.x.y.z``)."""
    if name == "localhost":
        return True
    address = _ip(name)
    if address is None:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def is_allowed_host(host_header: str | None, allowed: Iterable[str] = ()) -> bool:
    """Whether a request whose ``Host`` header is ``host_header`` may be served.

    True for a local name (:func:`is_local_name`) with any port, and for a name in
    ``allowed`` (entries as in ``MIST_ALLOWED_HOSTS``: names or addresses, ports ignored;
    ``.example.org`` also allows the names under it; ``*`` allows everything). False for a
    missing, empty or malformed header.
    """
    entries = [entry.strip().lower() for entry in allowed]
    if ANY in entries:
        return True
    name = host_name(host_header)
    if name is None:
        return False
    if is_local_name(name):
        return True
    for entry in entries:
        if entry.startswith("*."):
            suffix = host_name(entry[2:])
            if suffix is not None and name.endswith("." + suffix):
                return True
        elif entry.startswith("."):
            suffix = host_name(entry[1:])
            if suffix is not None and (name == suffix or name.endswith("." + suffix)):
                return True
        elif host_name(entry) == name:
            return True
    return False


def allowed_hosts_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The extra names listed in ``MIST_ALLOWED_HOSTS`` (commas or spaces between them).

    Raises ValueError naming the variable and the entry when an entry is not a host name,
    an address, ``.domain``, ``*.domain`` or ``*``.
    """
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    entries = tuple(entry for entry in re.split(r"[,\s]+", value) if entry)
    for entry in entries:
        if entry == ANY:
            continue
        if host_name(entry.removeprefix("*").removeprefix(".")) is None:
            raise ValueError(
                f"{ENV_VAR} has {entry!r}, which is not a host name or IP address; list "
                f"names separated by commas (e.g. {ENV_VAR}=mybox.lan,192.168.1.20), "
                "'.example.org' for a domain and the names under it, or '*' for any"
            )
    return entries


def streamlit_patterns(allowed: Iterable[str] = ()) -> tuple[str, ...]:
    """The local names and ``allowed`` as values of Streamlit's own ``server.allowedHosts``
    (which Streamlit checks on the WebSocket only): a second guard there, in step with this
    one. ``mybox.lan:8501`` -> ``mybox.lan``; ``.example.org`` -> ``example.org`` and
    ``*.example.org``; malformed entries are left out."""
    patterns = list(LOCAL_NAMES)
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == ANY:
            patterns.append(ANY)
        elif entry.startswith(("*.", ".")):
            suffix = host_name(entry.removeprefix("*").removeprefix("."))
            if suffix is not None:
                patterns += [suffix, f"*.{suffix}"] if entry.startswith(".") else [f"*.{suffix}"]
        elif (name := host_name(entry)) is not None:
            patterns.append(name)
    return tuple(dict.fromkeys(patterns))


class HostCheckMiddleware:
    """An ASGI middleware that answers 403 to HTTP requests and WebSocket upgrades whose
    ``Host`` header :func:`is_allowed_host` refuses; anything else (and the lifespan
    events) goes to ``app`` unchanged."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = tuple(allowed)
        self._logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [value for key, value in scope.get("headers", ()) if key.lower() == b"host"]
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else None  # several: refused
        if is_allowed_host(host, self.allowed):
            await self.app(scope, receive, send)
            return
        self._log(host, scope)
        if scope["type"] == "http":
            body = _refusal(host).encode()
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        # The upgrade: closing before accepting makes the server answer it with 403 (the
        # "websocket.http.response" extension would carry the text too, but uvicorn 0.54
        # then logs a spurious "returned without completing handshake" error).
        message = await receive()  # websocket.connect: the handshake is still pending
        if message.get("type") == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})

    def _log(self, host: str | None, scope: Scope) -> None:
        key = f"{scope['type']} {repr(host)[:100]}"
        if key in self._logged or len(self._logged) >= _MAX_LOGGED:
            return
        self._logged.add(key)
        LOG.warning(
            "Host check: refused a %s request to %s with Host %s (not a local name; "
            "allow it with %s)",
            scope["type"],
            scope.get("path", "?"),
            repr(host)[:100],
            ENV_VAR,
        )


def install(
    allowed: Iterable[str] = (),
    on_start: Callable[[tuple[str, ...]], None] | None = None,
) -> None:
    """Put :class:`HostCheckMiddleware` in front of the app Streamlit's server builds.

    Call before the server starts (``app/serve.py`` does). It wraps the factory that
    Streamlit 1.67's ``UvicornServer`` calls (``starlette_server.create_starlette_app``).
    There, once Streamlit's configuration is loaded, the names allowed are ``allowed`` and
    those of ``server.allowedHosts``; ``on_start`` is called with them. Raises
    RuntimeError when this Streamlit builds its server otherwise, so that the dashboard
    never runs without the check. Installing twice replaces the first.
    """
    try:
        from streamlit.web.server.starlette import starlette_server
    except ImportError as error:
        raise RuntimeError(_unsupported(f"it has no Starlette server ({error})")) from error
    factory = getattr(starlette_server, "create_starlette_app", None)
    if not callable(factory) or not hasattr(starlette_server, "UvicornServer"):
        raise RuntimeError(_unsupported("starlette_server.create_starlette_app is missing"))
    factory = getattr(factory, "__wrapped__", factory)
    entries = tuple(allowed)

    def create_starlette_app(*args: Any, **kwargs: Any) -> ASGIApp:
        from streamlit import config

        # server.allowedHosts: what serve.py derived from ``allowed``, and the user's own.
        derived = streamlit_patterns(entries)
        configured = [str(name) for name in config.get_option("server.allowedHosts") or ()]
        names = tuple(dict.fromkeys((*entries, *(n for n in configured if n not in derived))))
        if on_start is not None:
            on_start(names)
        return HostCheckMiddleware(factory(*args, **kwargs), names)

    create_starlette_app.__wrapped__ = factory  # type: ignore[attr-defined]
    starlette_server.create_starlette_app = create_starlette_app


def _unsupported(why: str) -> str:
    import streamlit

    return (
        f"cannot install the dashboard's Host check in Streamlit {streamlit.__version__}: "
        f"{why}. Install the version pinned in requirements.txt (pip install -r "
        "requirements.txt) or adapt app/hostcheck.py to this version."
    )


def _refusal(host: str | None) -> str:
    shown = "no Host header" if host is None else f"Host {host[:100]!r}"
    return (
        f"403 Forbidden: {shown} is not a local name. This dashboard answers only "
        "requests addressed to localhost, 127.0.0.1 or [::1] (a guard against DNS "
        f"rebinding). Open it as http://localhost:PORT/, or allow the name with the "
        f"environment variable {ENV_VAR} (comma-separated) when starting the server.\n"
    )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
