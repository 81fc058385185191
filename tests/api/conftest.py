"""Fixtures for the HTTP API: a real uvicorn server on 127.0.0.1 (free port) over an Engine on each database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from argon2 import PasswordHasher

from scheduler_core.api import auth
from scheduler_core.api.auth import UserAdmin
from scheduler_core.api.server import ServerHandle, serve_in_thread
from scheduler_core.config import Settings
from scheduler_core.console import Console

USER = "alice"
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters: the suite hashes and verifies hundreds of times on small CI machines. Production
    parameters are checked in test_auth (and used by the subprocess tests)."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def start_server(settings: Settings) -> Iterator[Callable[..., ServerHandle]]:
    """Start serve_in_thread for a console; every server started is stopped at the end of the test."""
    handles: list[ServerHandle] = []

    def start(console: Console, address: str = "127.0.0.1:0", **kwargs: object) -> ServerHandle:
        handle = serve_in_thread(console, address, settings, **kwargs)  # type: ignore[arg-type]
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture
def server(console: Console, start_server: Callable[..., ServerHandle]) -> ServerHandle:
    UserAdmin(console.engine.store).add(USER, PASSWORD)
    return start_server(console)


@pytest.fixture
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=(USER, PASSWORD), timeout=15) as c:
        yield c


@pytest.fixture
def anonymous(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=15) as c:
        yield c
