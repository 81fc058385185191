"""MariaDB restarted under a running daemon: processes survive, reconnect, and lose no history.

This stops and starts the machine's real MariaDB server (as `.ci/run` runs as root), and restores it afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler_core.console import Console
from scheduler_core.engine import Engine
from tests.conftest import make_db_url, wait_for
from tests.integration.test_processes import Cluster

MARIADBD = "/usr/sbin/mariadbd"

# It stops the MariaDB server every other test uses: scripts/test runs it alone, after the parallel part.
pytestmark = pytest.mark.exclusive


def mariadb_alive() -> bool:
    return subprocess.run(["mysqladmin", "--protocol=tcp", "-h127.0.0.1", "-uroot", "ping"],
                          capture_output=True).returncode == 0


def start_mariadb() -> None:
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", MARIADBD], check=True)
    wait_for(mariadb_alive, timeout=60, interval=0.2, message="MariaDB to come back")


@pytest.fixture
def mariadb_url(tmp_path: Path) -> Iterator[str]:
    if not mariadb_alive():
        pytest.fail("MariaDB is not running on 127.0.0.1:3306 (.ci/run starts it)")
    try:
        yield from make_db_url("mariadb", tmp_path)
    finally:
        if not mariadb_alive():
            start_mariadb()


def test_mariadb_restart_mid_run(mariadb_url: str, tmp_path: Path, make_settings) -> None:
    witness = tmp_path / "witness.txt"
    cluster = Cluster(mariadb_url, tmp_path)
    cluster.store.migrate()
    console_engine = Engine(make_settings(mariadb_url, poll_interval=0.2))
    try:
        daemon = cluster.start(CARNATION_LEASE_SECONDS="20")
        wait_for(lambda: cluster.leader_pid() == daemon.pid, timeout=20, message="the daemon to lead")
        console_engine.start(execute=False)
        job = {"id": "tick", "func": "tests.sample_jobs:record", "args": [str(witness), "x"],
               "trigger": "interval", "seconds": 1, "coalesce": False, "misfire_grace_time": 60}
        assert cluster.cli("jobs", "add", json.dumps(job)).returncode == 0
        wait_for(lambda: witness.exists() and len(witness.read_text().splitlines()) >= 2, timeout=20)

        subprocess.run(["mysqladmin", "--protocol=tcp", "-h127.0.0.1", "-uroot", "shutdown"], check=True)
        wait_for(lambda: not mariadb_alive(), timeout=30, interval=0.1, message="MariaDB to stop")
        wait_for(lambda: console_engine.db_error, timeout=10, message="the console to notice the outage")
        assert Console(console_engine).status().database_error  # what the TUI's banner shows
        # Runs come due while the database is down. The job was claimed a minute ahead (jobstore.py) and the lease
        # is surely held for 15 s more: they run, and their history waits in memory for the database.
        during = len(witness.read_text().splitlines())
        wait_for(lambda: len(witness.read_text().splitlines()) >= during + 2, timeout=10,
                 message="runs during the outage")
        assert not mariadb_alive()
        start_mariadb()
        restarted = time.time()

        assert daemon.poll() is None, "the daemon died with the database"
        wait_for(lambda: console_engine.db_error is None, timeout=15, message="the console to reconnect")
        wait_for(lambda: any(r["outcome"] == "success" and r["scheduled_at"] > restarted
                             for r in cluster.store.runs_page("tick", per_page=1000)[0]),
                 timeout=30, message="runs to be recorded again after the restart")
    finally:
        console_engine.stop(timeout=1)
        cluster.stop_all()
    store = cluster.store.__class__(mariadb_url)
    rows, _ = store.runs_page("tick", per_page=10_000)
    store.close()
    outcomes = [r["outcome"] for r in rows]
    executed = len(witness.read_text().splitlines())
    assert len({r["scheduled_at"] for r in rows}) == len(rows)
    # every execution is in the history (none lost in the outage), none happened twice
    assert outcomes.count("success") <= executed <= outcomes.count("success") + outcomes.count("abandoned")
    assert any(r["outcome"] == "error" and "database unavailable" in (r["exception"] or "") for r in rows) \
        or executed == outcomes.count("success")
