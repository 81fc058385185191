"""Authentication: Basic and bearer accepted, everything else refused with a challenge; users stored hashed;
the server refuses to start without users unless explicitly told to run without authentication."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx
import pytest
from argon2 import PasswordHasher

from scheduler_core.api import auth as auth_module
from scheduler_core.api.auth import Authenticator, UserAdmin
from scheduler_core.api.server import ApiNotStarted, ServerHandle, is_loopback, parse_address
from scheduler_core.console import Console
from scheduler_core.errors import SpecError

from .conftest import PASSWORD, USER

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # auth is the same on every database

CHALLENGE = 'Basic realm="Authentication Required"'  # Flask-APScheduler's HTTPBasicAuth header


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@SQLITE_ONLY
def test_every_route_needs_credentials(anonymous: httpx.Client) -> None:
    routes = [("GET", "/scheduler"), ("POST", "/scheduler/pause"), ("POST", "/scheduler/resume"),
              ("POST", "/scheduler/start"), ("POST", "/scheduler/shutdown"), ("GET", "/scheduler/jobs"),
              ("POST", "/scheduler/jobs"), ("GET", "/scheduler/jobs/j"), ("PATCH", "/scheduler/jobs/j"),
              ("DELETE", "/scheduler/jobs/j"), ("POST", "/scheduler/jobs/j/pause"), ("POST", "/scheduler/jobs/j/resume"),
              ("POST", "/scheduler/jobs/j/run"), ("GET", "/scheduler/jobs/j/history"), ("GET", "/scheduler/history"),
              ("POST", "/auth/token")]
    for method, path in routes:
        r = anonymous.request(method, path, json={"id": "j", "func": "tests.sample_jobs:add"})
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["WWW-Authenticate"] == CHALLENGE
        assert "error_message" in r.json()
    # The OpenAPI document is public: it describes, it reveals nothing.
    assert anonymous.get("/openapi.json").status_code == 200


@SQLITE_ONLY
def test_basic_credentials(anonymous: httpx.Client, console: Console) -> None:
    assert anonymous.get("/scheduler", headers=basic(USER, PASSWORD)).status_code == 200
    assert anonymous.get("/scheduler", headers=basic(USER.upper(), PASSWORD)).status_code == 200  # names fold case
    for headers in (basic(USER, "wrong password"), basic("mallory", PASSWORD), basic(USER, ""),
                    {"Authorization": "Basic 1231234"}, {"Authorization": "Basic"},
                    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
                    {"Authorization": "Digest username=alice"}, {"Authorization": "Basic " + "A" * 5000}):
        r = anonymous.get("/scheduler", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"] == CHALLENGE
    # A UTF-8 password works (RFC 7617).
    UserAdmin(console.engine.store).add("bob", "pässwörd-日本")
    assert anonymous.get("/scheduler", headers=basic("bob", "pässwörd-日本")).status_code == 200


@SQLITE_ONLY
def test_bearer_tokens(anonymous: httpx.Client, console: Console) -> None:
    r = anonymous.post("/auth/token", headers=basic(USER, PASSWORD))
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    token = body["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert anonymous.get("/scheduler/jobs", headers=bearer).status_code == 200
    assert anonymous.post("/scheduler/jobs", headers=bearer,
                          json={"id": "t", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
                                "weeks": 1}).status_code == 200

    # A token cannot buy another token: only the password can.
    assert anonymous.post("/auth/token", headers=bearer).status_code == 401
    assert anonymous.post("/auth/token", headers=basic(USER, "wrong password")).status_code == 401

    head, payload, signature = token.split(".")
    forged_payload = base64.urlsafe_b64encode(base64.urlsafe_b64decode(payload + "==").replace(
        USER.encode(), b"bob__")).rstrip(b"=").decode()
    for bad in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), f"{head}.{forged_payload}.{signature}",
                "v1.e30.", "garbage", "v1..", "é" * 10, token + "." + signature):
        r = anonymous.get("/scheduler/jobs", headers={"Authorization": f"Bearer {bad}".encode("latin-1")})
        assert r.status_code == 401, bad
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="Authentication Required"')


@SQLITE_ONLY
def test_tokens_expire_and_die_with_the_password(console: Console) -> None:
    store = console.engine.store
    admin = UserAdmin(store)
    admin.add("carol", "first password")
    auth = Authenticator(store, token_ttl=1)
    token = auth.issue_token("carol")
    assert auth.verify_token(token) == "carol"
    # Another process (another secret) does not accept it.
    assert Authenticator(store).verify_token(token) is None
    time.sleep(1.1)
    assert auth.verify_token(token) is None  # expired

    auth = Authenticator(store)
    token = auth.issue_token("carol")
    assert auth.verify_password("carol", "first password") == "carol"  # now cached
    admin.set_password("carol", "second password")
    assert auth.verify_token(token) is None
    assert auth.verify_password("carol", "first password") is None  # the cache never outlives a password change
    assert auth.verify_password("carol", "second password") == "carol"
    token = auth.issue_token("carol")
    admin.remove("carol")
    assert auth.verify_token(token) is None
    assert auth.verify_password("carol", "second password") is None


@SQLITE_ONLY
def test_passwords_are_stored_hashed(console: Console) -> None:
    store = console.engine.store
    admin = UserAdmin(store)
    admin.add("Dave", "a fine password")
    name, stored = store.get_user("dave")  # type: ignore[misc]
    assert name == "dave"
    assert stored.startswith("$argon2id$") and "a fine password" not in stored
    assert [u.username for u in admin.list()] == ["dave"]
    for call, message in (
        (lambda: admin.add("dave", "another password"), "username: user dave already exists"),
        (lambda: admin.add("eve", "short"), "password: must be at least 8 characters"),
        (lambda: admin.add("eve:x", "long enough"), "username: use 1 to 150 characters"),
        (lambda: admin.add("", "long enough"), "username: "),
        (lambda: admin.remove("nobody"), "username: no user named nobody"),
        (lambda: admin.set_password("nobody", "long enough"), "username: no user named nobody"),
    ):
        with pytest.raises(SpecError) as info:
            call()
        assert str(info.value).startswith(message)


@SQLITE_ONLY
def test_production_hash_parameters_and_rehash_on_login(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    strong = PasswordHasher()
    assert (strong.time_cost, strong.memory_cost) >= (3, 64 * 1024)  # argon2-cffi's RFC 9106 low-memory profile
    # A hash made with weaker parameters (the test fixture's) is upgraded at the next successful login.
    UserAdmin(console.engine.store).add("frank", "frank's password")
    monkeypatch.setattr(auth_module, "_hasher", strong)
    assert Authenticator(console.engine.store).verify_password("frank", "frank's password") == "frank"
    upgraded = console.engine.store.get_user("frank")[1]  # type: ignore[index]
    assert not strong.check_needs_rehash(upgraded)
    strong.verify(upgraded, "frank's password")


@SQLITE_ONLY
def test_server_refuses_to_start_without_users(console: Console, start_server: Callable[..., ServerHandle]) -> None:
    with pytest.raises(ApiNotStarted, match="carnation users add NAME"):
        start_server(console)


@SQLITE_ONLY
def test_insecure_mode_serves_loopback_without_auth(
    console: Console, start_server: Callable[..., ServerHandle]
) -> None:
    handle = start_server(console, "127.0.0.1:0", insecure_no_auth=True)
    with httpx.Client(base_url=handle.url, timeout=10) as c:
        assert c.get("/scheduler").status_code == 200
        assert c.post("/scheduler/jobs", json={"id": "x", "func": "tests.sample_jobs:add", "args": [1, 2],
                                               "trigger": "interval", "weeks": 1}).status_code == 200
        assert c.post("/auth/token").status_code == 404  # no users, no tokens
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
        r = c.get("/scheduler/jobs", headers={"Host": "evil.example"})
        assert r.status_code == 400 and r.json()["error_message"].startswith("Host: ")
        assert c.get("/scheduler", headers={"Host": f"localhost:{handle.port}"}).status_code == 200


def test_addresses() -> None:
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("", "x", "host:", "1:2:3", "[::1]", "[::1]8080", "70000", "a:-1"):
        with pytest.raises(SpecError, match="^http: "):
            parse_address(bad)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.com"))
