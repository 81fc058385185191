"""What an idle process does (bench/README F4, F5): one cheap poll per look, no timer in the history writer while
there is nothing to write, and no event objects while nobody subscribes. Each behaviour still works when needed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core import engine as engine_mod
from scheduler_core.console import Console
from scheduler_core.engine import Engine
from scheduler_core.events import EventBus, SchedulerEvent
from scheduler_core.history import HistoryRecorder, run_row
from scheduler_core.store import JOBS_SEQ_KEY, Store, meta_table, run_requests_table
from tests.conftest import wait_for
from tests.unit.test_engine import interval_job, runs_of


# --- Store.poll ----------------------------------------------------------------------------------------------
@pytest.mark.db
def test_poll_sees_what_another_process_commits(store: Store, db_url: str) -> None:
    other = Store(db_url)
    try:
        seq, pending = store.poll()
        assert (seq, pending) == (store.jobs_seq(), False)
        # Another process edits a job and asks for a run, between two polls on the same kept connection (a
        # transaction left open there would keep InnoDB's REPEATABLE READ snapshot and see neither).
        with other.engine.begin() as conn:
            conn.execute(meta_table.update().where(meta_table.c.key == JOBS_SEQ_KEY)
                         .values(value=meta_table.c.value + 1))
            conn.execute(run_requests_table.insert().values(job_id="j", requested_at=time.time(), requested_by="t"))
        assert store.poll() == (seq + 1, True)
        assert other.take_run_requests() == ["j"]
        assert store.poll() == (seq + 1, False)
        assert store.engine.pool.checkedout() == 1  # one connection, kept, however many polls
    finally:
        other.close()


def _kill_poll_connection(store: Store, db_url: str) -> None:
    """Drop the poll connection as a database restart would: server-side, under the client's feet."""
    if store.dialect == "sqlite":
        store._poll_conn.connection.driver_connection.close()
        return
    admin = sa.create_engine(db_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        else:
            for (conn_id,) in conn.exec_driver_sql(
                    "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"):
                conn.exec_driver_sql(f"KILL {conn_id}")
    admin.dispose()


@pytest.mark.db
def test_poll_reconnects_when_its_connection_died(store: Store, db_url: str) -> None:
    seq, _ = store.poll()
    _kill_poll_connection(store, db_url)
    assert store.poll() == (seq, False)  # the dead connection is dropped and the look retried on a new one
    assert store.poll() == (seq, False)


@pytest.mark.db
def test_poll_fails_while_the_database_is_unreachable_then_recovers(store: Store, db_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seq, _ = store.poll()
    _kill_poll_connection(store, db_url)

    def unreachable() -> None:
        raise sa.exc.OperationalError("connect", {}, Exception("database down"))

    monkeypatch.setattr(store.engine, "connect", unreachable)
    with pytest.raises(sa.exc.OperationalError):
        store.poll()
    monkeypatch.undo()
    assert store.poll() == (seq, False)


def test_close_gives_the_poll_connection_back(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.migrate()
    pool = store.engine.pool
    store.poll()
    store.end_poll()
    assert pool.checkedout() == 0
    store.poll()
    assert pool.checkedout() == 1
    store.close()
    assert pool.checkedout() == 0


# --- the engine's poller -------------------------------------------------------------------------------------
@pytest.mark.db
def test_run_requests_are_read_only_when_one_is_pending(console: Console, engine: Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[list[str]] = []
    take = engine.store.take_run_requests
    monkeypatch.setattr(engine.store, "take_run_requests", lambda: taken.append(take()) or taken[-1])
    console.add_job(interval_job("asked"))
    polls = engine.settings.poll_interval
    time.sleep(polls * 4)
    assert taken == []  # an idle executor never opened the transaction that claims requests
    engine.store.request_run("asked", "someone else")  # what a console-only process does
    wait_for(lambda: runs_of(console, "asked"), message="the requested run")
    assert taken == [["asked"]]


# --- events nobody reads -------------------------------------------------------------------------------------
def test_event_bus_knows_whether_anyone_listens() -> None:
    bus = EventBus()
    assert not bus.has_subscribers
    subscription = bus.subscribe()
    assert bus.has_subscribers
    subscription.close()
    assert not bus.has_subscribers
    bus.on_event(lambda event: None)
    assert bus.has_subscribers


@pytest.mark.db
def test_headless_engine_builds_no_events_but_records_history(console: Console, engine: Engine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    def counting(**fields: Any) -> SchedulerEvent:
        built.append(fields)
        return SchedulerEvent(**fields)

    monkeypatch.setattr(engine_mod, "SchedulerEvent", counting)
    console.add_job(interval_job("quiet", seconds=1))
    wait_for(lambda: runs_of(console, "quiet"), message="a run recorded with nobody subscribed")
    assert built == []
    assert engine.last_runs["quiet"]["outcome"] == "success"

    subscription = console.subscribe()
    seen: list[SchedulerEvent] = []
    wait_for(lambda: seen.extend(subscription.drain()) or any(
        e.kind == "executed" and e.job_id == "quiet" and e.message.endswith(" s") for e in seen),
        message="an executed event with its duration, once someone listens")


# --- the history writer --------------------------------------------------------------------------------------
class _FakeStore:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def insert_runs(self, rows: list[dict[str, Any]], via: object = None) -> tuple[int, list[dict[str, Any]]]:
        self.batches.append(list(rows))
        return len(rows), []

    def kept_connection(self) -> Any:
        return _NoConnection()


class _NoConnection:
    def close(self) -> None:
        pass


class _CountingEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


@pytest.fixture
def recorder() -> Any:
    recorder = HistoryRecorder(_FakeStore(), flush_interval=0.05)  # type: ignore[arg-type]
    recorder._wake = _CountingEvent()
    recorder.start()
    yield recorder
    recorder.stop(timeout=2)


def test_idle_history_writer_sleeps_then_writes_a_new_row_promptly(recorder: HistoryRecorder) -> None:
    time.sleep(1.0)
    assert recorder._wake.waits <= 2  # not 20 timed wake-ups with nothing to do
    recorded = time.monotonic()
    rows = [run_row("late", time.time() + i, "success") for i in range(2)]
    for row in rows:
        recorder.record(row)
    wait_for(lambda: recorder.store.batches, timeout=2, message="the rows to be written")
    assert time.monotonic() - recorded < 1.0
    assert recorder.store.batches == [rows]  # gathered for flush_interval, written as one batch
    recorder.record(run_row("late", time.time() + 9, "success"))
    assert recorder.flush(2) and len(recorder.store.batches) == 2


def test_idle_history_writer_wakes_for_a_run_that_goes_on(recorder: HistoryRecorder) -> None:
    time.sleep(0.3)
    recorder.run_started("long", time.time())
    wait_for(lambda: any(r["outcome"] == "running" for b in recorder.store.batches for r in b),
             timeout=HistoryRecorder.MARK_AFTER + 2, message='the "running" row of a run started while idle')


class _SlowFakeStore(_FakeStore):
    def insert_runs(self, rows: list[dict[str, Any]], via: object = None) -> tuple[int, list[dict[str, Any]]]:
        time.sleep(0.005)  # a round trip and a commit
        return super().insert_runs(rows, via)


def test_busy_history_writer_gathers_rows_for_flush_interval_between_writes() -> None:
    """Rows arriving during a write wait for the next gathered batch, not a write of their own right after: at 1,000
    runs/s that made batches of ~4 rows, and the cost per batch took a fifth of a core in writer and server."""
    store = _SlowFakeStore()
    recorder = HistoryRecorder(store, flush_interval=0.05)  # type: ignore[arg-type]
    recorder.start()
    try:
        for i in range(300):
            recorder.record(run_row("steady", 1000.0 + i, "success"))
            time.sleep(0.001)
        assert recorder.flush(5)
    finally:
        recorder.stop(timeout=2)
    assert [r["scheduled_at"] for b in store.batches for r in b] == [1000.0 + i for i in range(300)]
    assert len(store.batches) <= 30, [len(b) for b in store.batches]  # ~6; writing at once made ~60


def test_idle_history_writer_stops_at_once(recorder: HistoryRecorder) -> None:
    time.sleep(0.3)
    started = time.monotonic()
    recorder.stop(timeout=2)
    assert not recorder._thread.is_alive() and time.monotonic() - started < 0.5
