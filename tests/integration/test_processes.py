"""Real `carnation` processes sharing one database: one executor, failover after kill -9, at-most-once runs,
edits from other processes and the CLI reaching the executor, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from scheduler_core.store import Store
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
CARNATION = [sys.executable, "-m", "scheduler_core"]
LEASE = 2.0

pytestmark = pytest.mark.db


class Cluster:
    """Headless carnation processes on one database."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.store = Store(db_url)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "CARNATION_DB_URL": self.db_url,
            "CARNATION_LOG_DIR": str(self.tmp_path / "log"),
            "CARNATION_CONFIG": str(self.tmp_path / "none.toml"),
            "CARNATION_LEASE_SECONDS": str(LEASE),
            "CARNATION_POLL_INTERVAL": "0.2",
            "CARNATION_TIMEZONE": "UTC",
            "PYTHONPATH": str(REPO),
            **extra,
        }

    def start(self, **extra: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"proc-{len(self.procs)}.err", "wb")
        proc = subprocess.Popen([*CARNATION, "--headless"], env=self.env(**extra), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CARNATION, *args], env=self.env(), cwd=REPO, capture_output=True, text=True,
                              timeout=60)

    def leader_pid(self) -> int | None:
        holder = self.store.lease_holder()
        live = {p.pid for p in self.procs if p.poll() is None}
        return holder["pid"] if holder and holder["pid"] in live else None

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.store.close()


@pytest.fixture
def cluster(db_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(db_url, tmp_path)
    # The schema exists before several processes race to create it.
    c.store.migrate()
    yield c
    c.stop_all()


def runs(cluster: Cluster, job_id: str) -> list[dict]:
    rows, _ = cluster.store.runs_page(job_id, per_page=100_000)
    return rows


def test_one_executor_and_failover_after_kill_9_without_double_runs(cluster: Cluster, tmp_path: Path) -> None:
    witness = tmp_path / "witness.txt"
    for _ in range(3):
        cluster.start()
    wait_for(cluster.leader_pid, timeout=20, message="a leader")
    # Each execution appends "job scheduled-time": a second execution of one scheduled run would show.
    added = cluster.cli("jobs", "add", json.dumps({
        "id": "tick", "kind": "shell", "target": f'echo "$CARNATION_JOB_ID $CARNATION_SCHEDULED_AT" >> {witness}',
        "trigger": {"type": "interval", "seconds": 1}, "misfire_grace_time": 60, "coalesce": False}))
    assert added.returncode == 0, added.stderr
    failovers = []
    for _ in range(3):
        wait_for(lambda: witness.exists() and len(witness.read_text().splitlines()) >= 2, timeout=20,
                 message="the job to run")
        leader = cluster.leader_pid()
        assert leader is not None
        os.kill(leader, signal.SIGKILL)
        killed_at = time.monotonic()
        new_leader = wait_for(lambda: (pid := cluster.leader_pid()) not in (None, leader) and pid, timeout=LEASE * 6,
                              message="a standby to take over")
        failovers.append(time.monotonic() - killed_at)
        assert new_leader != leader
        cluster.start()  # replace the dead process
    lines_before = len(witness.read_text().splitlines())
    wait_for(lambda: len(witness.read_text().splitlines()) > lines_before + 1, timeout=20)
    cluster.stop_all()

    rows = runs(cluster, "tick")
    executions = [datetime.fromisoformat(line.split(" ", 1)[1]).timestamp()
                  for line in witness.read_text().splitlines()]
    assert len(executions) == len(set(executions)), "a scheduled run executed twice"
    recorded = {round(r["scheduled_at"], 6): r["outcome"] for r in rows}
    assert len(recorded) == len(rows)  # the unique key holds
    # every execution is in the history, as finished or (killed mid-way) abandoned
    for at in executions:
        assert recorded.get(round(at, 6)) in ("success", "abandoned"), (at, recorded)
    assert list(recorded.values()).count("success") >= len(executions) - list(recorded.values()).count("abandoned")
    assert all(f < LEASE * 3 for f in failovers), failovers
    # exactly one executor at any time: every success came from a process that held the lease then
    assert len({r["pid"] for r in rows}) >= 2


def test_only_allowed_hosts_execute(cluster: Cluster, tmp_path: Path) -> None:
    console_only = cluster.start(CARNATION_ALLOWED_HOSTS="some-other-host")
    time.sleep(LEASE)  # long enough that it would have taken the free lease if it were allowed to
    assert cluster.store.lease_holder() is None
    status = cluster.cli("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["executor"] is None
    executor = cluster.start()
    wait_for(lambda: cluster.leader_pid() == executor.pid, message="the allowed process to lead")
    assert console_only.poll() is None
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert status["executor"].endswith(f"pid {executor.pid}")


def test_cli_edits_reach_the_running_daemon(cluster: Cluster, tmp_path: Path) -> None:
    witness = tmp_path / "w.txt"
    daemon = cluster.start()
    wait_for(lambda: cluster.leader_pid() == daemon.pid, message="the daemon to lead")
    job = {"id": "e", "func": "tests.sample_jobs:record", "args": [str(witness), "1"], "trigger": "interval",
           "hours": 1}
    assert cluster.cli("jobs", "add", json.dumps(job)).returncode == 0
    assert cluster.cli("jobs", "run", "e").returncode == 0
    wait_for(lambda: witness.exists(), message="run-now from the CLI to execute in the daemon")
    changed = cluster.cli("jobs", "update", "e", json.dumps({"trigger": "interval", "seconds": 1}))
    assert changed.returncode == 0, changed.stderr
    wait_for(lambda: len(witness.read_text().splitlines()) >= 3, message="the changed schedule to fire")
    assert cluster.cli("jobs", "pause", "e").returncode == 0
    time.sleep(0.5)
    count = len(witness.read_text().splitlines())
    time.sleep(1.5)
    assert len(witness.read_text().splitlines()) <= count + 1  # at most one run already in flight
    listed = json.loads(cluster.cli("jobs", "list", "--json").stdout)
    assert [(j["id"], j["state"]) for j in listed] == [("e", "paused")]
    bad = cluster.cli("jobs", "add", json.dumps({**job, "id": "f", "trigger": "cron", "hour": "25"}))
    assert bad.returncode == 2 and "hour" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert cluster.cli("jobs", "remove", "e").returncode == 0
    assert cluster.cli("jobs", "remove", "e").returncode == 2


def test_sigterm_waits_for_running_job_and_flushes_history(cluster: Cluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    daemon = cluster.start()
    wait_for(lambda: cluster.leader_pid() == daemon.pid)
    job = {"id": "long", "func": "tests.sample_jobs:block_until", "args": [str(release), 3], "trigger": "interval",
           "hours": 1}
    assert cluster.cli("jobs", "add", json.dumps(job)).returncode == 0
    assert cluster.cli("jobs", "run", "long").returncode == 0
    wait_for(lambda: any(r["outcome"] == "running" for r in runs(cluster, "long")), message="the run to start")
    daemon.send_signal(signal.SIGTERM)
    release.touch()
    assert daemon.wait(20) == 0
    assert [r["outcome"] for r in runs(cluster, "long")] == ["success"]
    assert cluster.store.lease_holder() is None  # handed on at once, not after the lease expires
