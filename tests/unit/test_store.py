"""Store internals the engine tests do not pin down: retention in short transactions, and the job change counter."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core.errors import ConflictingId, JobNotFound
from scheduler_core.history import run_row
from scheduler_core.store import Store, runs_table

pytestmark = pytest.mark.db


def add_runs(store: Store, job_id: str, count: int, age: float = 0.0) -> None:
    """`count` runs of `job_id`, recorded `age` seconds ago, oldest first (so ids follow age)."""
    now = time.time()
    rows = [dict(run_row(job_id, now - age - count + i, "success"), recorded_at=now - age - count + i)
            for i in range(count)]
    with store.engine.begin() as conn:
        conn.execute(runs_table.insert(), rows)


def run_ids(store: Store, job_id: str) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(runs_table.c.id).where(runs_table.c.job_id == job_id)
                                 .order_by(runs_table.c.id)).scalars())


def test_prune_runs_deletes_in_short_transactions_and_keeps_exactly_the_newest(store: Store) -> None:
    add_runs(store, "a", 10, age=40 * 86400)  # too old
    add_runs(store, "a", 12)  # 7 over the limit: more than a chunk, trimmed in chunks of its own
    add_runs(store, "b", 3)  # under the limit
    for job_id in ("c", "d", "e"):
        add_runs(store, job_id, 6)  # 1 over each: trimmed together
    add_runs(store, "f", 8)  # 3 over
    newest = {job_id: run_ids(store, job_id)[-5:] for job_id in "abcdef"}
    store.PRUNE_CHUNK = 4

    per_transaction = [0]

    def count_deleted(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            per_transaction[-1] += cursor.rowcount

    def close_transaction(_conn: Any) -> None:
        per_transaction.append(0)

    sa.event.listen(store.engine, "after_cursor_execute", count_deleted)
    sa.event.listen(store.engine, "commit", close_transaction)
    try:
        assert store.prune_runs(keep_per_job=5, max_age_seconds=30 * 86400) == 10 + 7 + 3 + 3
    finally:
        sa.event.remove(store.engine, "after_cursor_execute", count_deleted)
        sa.event.remove(store.engine, "commit", close_transaction)
    assert sum(per_transaction) == 23
    assert max(per_transaction) <= 4, per_transaction  # the old prune: one transaction of 23
    assert len([n for n in per_transaction if n]) >= 6
    assert {job_id: run_ids(store, job_id) for job_id in "abcdef"} == {**newest, "b": newest["b"][-3:]}
    assert store.prune_runs(keep_per_job=5, max_age_seconds=30 * 86400) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_prune_runs_lets_a_history_write_in_between_chunks(store: Store) -> None:
    # SQLite has one write lock: a prune in one transaction holds it from the first delete to the end, and a
    # history write waits (here: fails after the 10 s busy timeout).
    add_runs(store, "a", 10, age=40 * 86400)
    add_runs(store, "b", 10)
    store.PRUNE_CHUNK = 3
    deletes: list[str] = []
    outcome: list[object] = []

    def write() -> None:
        try:
            outcome.append(store.insert_runs([run_row("w", time.time(), "success")]))
        except Exception as exc:
            outcome.append(exc)

    def between_chunks(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)
            if len(deletes) == 2:  # between the first two chunks
                writer = threading.Thread(target=write)
                writer.start()
                writer.join(60)

    sa.event.listen(store.engine, "before_cursor_execute", between_chunks)
    try:
        assert store.prune_runs(keep_per_job=4, max_age_seconds=30 * 86400) == 10 + 6
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", between_chunks)
    assert outcome == [(1, [])]
    assert len(run_ids(store, "w")) == 1 and len(run_ids(store, "b")) == 4


def test_every_edit_bumps_the_counter_once_into_the_row_in_two_statements(store: Store) -> None:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "carnation_" in statement:
            statements.append(statement)

    def edit_statements(edit: Any, *args: Any, **kwargs: Any) -> int:
        statements.clear()
        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            edit(*args, **kwargs)
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        return len(statements)

    start = store.jobs_seq()
    assert edit_statements(store.insert_job, "x", '{"v": 1}', None, False) == 2  # the bump and the INSERT
    assert store.jobs_seq() == store.get_job_row("x").seq == start + 1
    with pytest.raises(ConflictingId):
        store.insert_job("x", '{"v": 2}', None, False)
    assert store.jobs_seq() == store.get_job_row("x").seq == start + 1
    assert store.get_job_row("x").spec == '{"v": 1}'

    assert edit_statements(store.update_job, "x", spec_json='{"v": 3}', paused=True) == 2
    row = store.get_job_row("x")
    assert (store.jobs_seq(), row.seq, row.spec, row.paused) == (start + 2, start + 2, '{"v": 3}', True)
    with pytest.raises(JobNotFound):
        store.update_job("missing", spec_json="{}")
    assert store.jobs_seq() == start + 2

    assert edit_statements(store.delete_job, "x") == 2
    assert store.jobs_seq() == start + 3
    assert store.delete_job("x") is False
    assert store.jobs_seq() == start + 3


def test_concurrent_edits_each_get_their_own_seq(store: Store) -> None:
    start = store.jobs_seq()
    errors: list[Exception] = []

    def add(prefix: str) -> None:
        try:
            for i in range(10):
                store.insert_job(f"{prefix}{i}", "{}", None, False)
                store.update_job(f"{prefix}{i}", spec_json='{"edited": true}')
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(prefix,)) for prefix in "pqrs"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    seqs = sorted(row.seq for row in store.load_jobs())
    # 80 edits, each thread's last one an update: every row keeps its update's own seq, the latest the counter's.
    assert store.jobs_seq() == start + 80
    assert len(set(seqs)) == 40 and seqs[-1] == start + 80


def test_next_run_times_claim_their_runs_and_spare_paused_jobs(store: Store) -> None:
    """The write-behind in every batch size (MariaDB sends fixed-size CASE updates, padded): each row gets its next
    run time and its own claim (one claiming runs ahead further); a paused row keeps NULL but its claim is written;
    None keeps the old claim."""
    count = store.CASE_CHUNK * 2 + 37
    for i in range(count):
        store.insert_job(f"j{i:03d}", "{}", None, paused=(i == 5))
    store.write_next_run_times([(f"j{i:03d}", 1000.0 + i, 1000.0 + i + (i % 3)) for i in range(count)])
    store.write_next_run_times([("j007", None, None), ("j008", 5000.0, 5600.0)])
    store.write_next_run_times([("j009", None, None)])  # no value to tell an array's type by (PostgreSQL)
    rows = {row.id: row for row in store.load_jobs()}
    assert len(rows) == count
    for i in range(count):
        row = rows[f"j{i:03d}"]
        expected = {5: None, 7: None, 8: 5000.0, 9: None}.get(i, 1000.0 + i)
        assert row.next_run_time == expected, row
        assert row.claimed_until == (5600.0 if i == 8 else 1000.0 + i + (i % 3)), row
    # claims alone only ever move forward
    store.write_next_run_times([], claims=[("j010", 900.0), ("j011", 2000.0)])
    rows = {row.id: row for row in store.load_jobs()}
    assert rows["j010"].claimed_until == 1011.0 and rows["j011"].claimed_until == 2000.0
    # finished one-off jobs go, many at once, the others stay
    gone = [f"j{i:03d}" for i in range(0, count, 2)]
    store.write_next_run_times([], deletes=gone + ["never-existed"])
    assert sorted(row.id for row in store.load_jobs()) == [f"j{i:03d}" for i in range(1, count, 2)]
