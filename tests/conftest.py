"""Shared fixtures: real databases (SQLite, MariaDB, PostgreSQL), settings isolated from the user's, engines.

Every `db_url` test runs on all three databases. A database server that is down makes those tests fail loudly
(never skip): `.ci/run` starts both servers. CARNATION_TEST_DBS=sqlite narrows the set for a quick local run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scheduler_core.config import Settings, load_settings

MARIADB_ADMIN = dict(host="127.0.0.1", port=3306, user="root", password="")
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
ALL_DBS = ("sqlite", "mariadb", "postgresql")
SELECTED_DBS = tuple(os.environ.get("CARNATION_TEST_DBS", ",".join(ALL_DBS)).split(","))


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, message: str = "") -> object:
    """Poll `condition` until it is truthy; fail the test with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message or condition}")
        time.sleep(interval)


def _mariadb_database() -> Iterator[str]:
    import pymysql

    name = f"carnation_t_{uuid.uuid4().hex[:10]}"
    try:
        conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB is not reachable on 127.0.0.1:3306 (start it; .ci/run does): {exc}")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")  # the server default charset (latin1): migrations must cope
    conn.close()
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    finally:
        # A new connection: the server may have been restarted meanwhile (tests/integration/test_outage.py).
        conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


def _postgres_database() -> Iterator[str]:
    import psycopg

    name = f"carnation_t_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 (start it; .ci/run does): {exc}")
    conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


def make_db_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'carnation.db'}"
    elif kind == "mariadb":
        yield from _mariadb_database()
    else:
        yield from _postgres_database()


@pytest.fixture(params=SELECTED_DBS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    yield from make_db_url(request.param, tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'carnation.db'}"


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the developer's own config or write to their data dir."""
    for key in list(os.environ):
        if key.startswith("CARNATION_") and key != "CARNATION_TEST_DBS":
            monkeypatch.delenv(key)
    monkeypatch.setenv("CARNATION_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(db_url: str, **overrides: object) -> Settings:
        values = dict(db_url=db_url, log_dir=str(tmp_path / "log"), timezone="UTC", misfire_grace_time=30)
        values.update(overrides)
        return load_settings(None, **values)

    return make


@pytest.fixture
def settings(db_url: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(db_url)


@pytest.fixture
def store(db_url: str) -> Iterator["Store"]:
    """A migrated Store over a fresh database of each kind."""
    from scheduler_core.store import Store

    store = Store(db_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def engine(settings: Settings) -> Iterator["Engine"]:
    from scheduler_core.engine import Engine

    eng = Engine(settings)
    eng.start()
    yield eng
    if eng.started:
        eng.stop(timeout=5)
    eng.store.close()


@pytest.fixture
def console(engine: "Engine") -> "Console":
    from scheduler_core.console import Console

    return Console(engine)
