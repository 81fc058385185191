"""Serve the API with uvicorn on a thread of the scheduler's own process.

Never several workers: each would be a process with its own Engine, i.e. its own scheduler. One process, one engine,
one server thread (requests run on its event loop and thread pool).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from ..config import Settings
from ..console import Console
from ..errors import CarnationError, FieldError, SpecError
from .app import create_app
from .auth import Authenticator

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class ApiNotStarted(CarnationError):
    """The HTTP API refused to start (no users, or an unsafe address); the message says what to do."""


def parse_address(text: str) -> tuple[str, int]:
    """'8080', ':8080', 'HOST:8080' or '[::1]:8080' -> (host, port). The host defaults to 127.0.0.1."""
    text = text.strip()
    host, port_text = DEFAULT_HOST, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise SpecError(FieldError("http", f"{text!r}: write an IPv6 address as [ADDRESS]:PORT"))
        host, port_text = text[1:end], text[end + 2:]
    elif ":" in text:
        host_part, _, port_text = text.rpartition(":")
        if ":" in host_part:
            raise SpecError(FieldError("http", f"{text!r}: write an IPv6 address as [ADDRESS]:PORT"))
        host = host_part or DEFAULT_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SpecError(FieldError("http", f"{text!r}: expected [HOST:]PORT with a port from 0 to 65535"))
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


@dataclass
class ServerHandle:
    """A running API server. `stop()` ends it (in-flight requests get a moment to finish)."""

    host: str
    port: int
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(2)


def serve_in_thread(
    console: Console,
    address: str,
    settings: Settings,
    *,
    insecure_no_auth: bool = False,
    ready_timeout: float = 10.0,
) -> ServerHandle:
    """Start the API on `address` ("[HOST:]PORT"; port 0 picks a free one) and return once it accepts connections.

    With authentication (the default) at least one user must exist (`carnation users add NAME`). insecure_no_auth
    (--http-insecure-no-auth) serves without any authentication, on any address: anyone who can connect can then run
    commands as this process's user. Raises ApiNotStarted (no users, cannot bind) or SpecError (bad address).
    """
    host, port = parse_address(address)
    loopback = is_loopback(host)
    if insecure_no_auth:
        log.warning("!!! HTTP API WITHOUT AUTHENTICATION on %s:%s: anyone who can connect can add and run jobs%s !!!",
                    host, port, "" if loopback else " -- and this address is reachable from other machines")
        # Without credentials a browser page could reach a loopback server through DNS rebinding: accept only
        # requests addressed to a loopback name.
        trusted = ["localhost", "127.0.0.1", "[::1]"] if loopback else None
        app = create_app(console, settings, auth_required=False, trusted_hosts=trusted)
    else:
        users = console.engine.store.count_users()
        if users == 0:
            raise ApiNotStarted(
                "the HTTP API needs a user: add one with `carnation users add NAME` (same --db/--config), then start "
                "again; or, on a trusted machine only, pass --http-insecure-no-auth to serve without authentication"
            )
        if not loopback:
            log.warning("HTTP API on %s:%s is reachable from other machines and is plain HTTP: credentials cross the "
                        "network in clear unless a TLS proxy sits in front", host, port)
        app = create_app(console, settings, auth_required=True, authenticator=Authenticator(console.engine.store))

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ApiNotStarted(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound_port = sock.getsockname()[1]

    config = uvicorn.Config(
        app,
        workers=1,
        lifespan="off",
        log_config=None,  # carnation's logging (file, and stderr when headless) already receives uvicorn's loggers
        access_log=True,
        proxy_headers=False,  # never trust X-Forwarded-For: logged client addresses are the real peers
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        limit_concurrency=200,
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="carnation-http", daemon=True)
    thread.start()
    handle = ServerHandle(host, bound_port, server, thread)
    if not _wait_started(server, thread, ready_timeout):
        handle.stop(2)
        sock.close()
        raise ApiNotStarted(f"the HTTP API did not start on {host}:{bound_port} (see the log)")
    log.info("HTTP API on %s (%s)", handle.url, "NO AUTHENTICATION" if insecure_no_auth else "authentication required")
    return handle


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.started
