"""The writer threads' database writes from a child process (scheduler_core/writer.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.history import WRITER_NICENESS, run_row
from scheduler_core.store import Store, runs_table
from scheduler_core.writer import LocalWriter, ProcessWriter, WriterGone, _cpu_state, make_writer
from tests.conftest import wait_for


@pytest.fixture
def writer(store: Store) -> Iterator[ProcessWriter]:
    writer = ProcessWriter(store, "test")
    yield writer
    writer.close()


def outcomes(store: Store, job_id: str) -> dict[float, str]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(runs_table.c.scheduled_at, runs_table.c.outcome)
                            .where(runs_table.c.job_id == job_id)).all()
    return {at: outcome for at, outcome in rows}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_process_writes_history_and_next_run_times(store: Store, writer: ProcessWriter) -> None:
    writer.open()
    assert writer.pid and writer.pid != os.getpid() and alive(writer.pid)
    assert writer.insert_runs([run_row("w", 1000.0 + i, "success") for i in range(3)]) == (3, [])
    assert outcomes(store, "w") == {1000.0: "success", 1001.0: "success", 1002.0: "success"}
    # A clash on (job, scheduled time) comes back as a duplicate, as it does in this process.
    written, duplicates = writer.insert_runs([run_row("w", 1000.0, "success")])
    assert written == 0 and [(d["job_id"], d["scheduled_at"]) for d in duplicates] == [("w", 1000.0)]
    store.insert_job("j", "{}", None, paused=False)
    writer.write_next_run_times([("j", 2000.0, 2000.0)])
    assert store.load_jobs()[0].next_run_time == 2000.0 and store.load_jobs()[0].claimed_until == 2000.0
    writer.write_next_run_times([], deletes=["j"])
    assert store.load_jobs() == []


def test_values_marshal_cannot_take_still_reach_the_database(store: Store, writer: ProcessWriter) -> None:
    """A str subclass (a job's exception whose __str__ returns one, say) or an object of no plain type must not fail
    the batch: it would fail again on every retry and hold up the history behind it."""

    class Text(str):
        pass

    row = run_row("odd", 1000.0, "error", exception=Text("disk full"))
    row["return_value"] = object()
    assert writer.insert_runs([row]) == (1, [])
    with store.engine.connect() as conn:
        exception, return_value = conn.execute(sa.select(runs_table.c.exception, runs_table.c.return_value)
                                               .where(runs_table.c.job_id == "odd")).one()
    assert exception == "disk full" and return_value.startswith("<object object at")


def test_a_database_error_in_the_child_reaches_the_caller(store: Store, writer: ProcessWriter) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE carnation_runs"))
    with pytest.raises(sa.exc.DBAPIError, match="carnation_runs"):
        writer.insert_runs([run_row("w", 1000.0, "success")])
    store.insert_job("j", "{}", None, paused=False)
    writer.write_next_run_times([("j", 2000.0, 2000.0)])  # the child goes on after an error
    assert store.load_jobs()[0].next_run_time == 2000.0


def test_a_killed_child_fails_one_write_and_the_next_starts_another(store: Store, writer: ProcessWriter) -> None:
    writer.insert_runs([run_row("k", 1.0, "success")])
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with pytest.raises(WriterGone):
        writer.insert_runs([run_row("k", 2.0, "success")])
    assert writer.insert_runs([run_row("k", 2.0, "success")]) == (1, [])
    assert writer.pid not in (None, first)
    assert outcomes(store, "k") == {1.0: "success", 2.0: "success"}


def test_the_child_outlives_sigterm_and_sigint_so_the_parent_can_write_what_it_holds(
        store: Store, writer: ProcessWriter) -> None:
    writer.write_next_run_times([], deletes=["nothing"])  # started
    assert writer.pid is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        os.kill(writer.pid, sig)
    assert writer.insert_runs([run_row("s", 1.0, "success")]) == (1, [])
    pid = writer.pid
    writer.close()
    assert not alive(pid)


def test_a_child_that_cannot_start_gives_way_to_writes_in_this_process(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    writer = ProcessWriter(store, "doomed")
    try:
        for _ in range(ProcessWriter.GIVE_UP_AFTER):
            with pytest.raises(WriterGone):
                writer.insert_runs([run_row("f", 1.0, "success")])
        assert writer.insert_runs([run_row("f", 1.0, "success")]) == (1, [])
        assert outcomes(store, "f") == {1.0: "success"}
    finally:
        writer.close()


def test_the_child_exits_when_its_parent_is_killed(db_url: str, store: Store, tmp_path: Path) -> None:
    parent = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        from scheduler_core.store import Store
        from scheduler_core.writer import ProcessWriter
        writer = ProcessWriter(Store({db_url!r}), "orphan")
        writer.write_next_run_times([], deletes=["nothing"])
        print(writer.pid, flush=True)
        os._exit(0)  # as kill -9 would: no close, no atexit
        """)], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert parent.returncode == 0, parent.stderr
    child = int(parent.stdout.strip())
    wait_for(lambda: not alive(child), message="the orphaned writer process to exit")


def test_an_in_memory_sqlite_database_is_written_in_this_process() -> None:
    memory = Store("sqlite://")
    try:
        assert isinstance(make_writer(memory, "m", in_child_process=True), LocalWriter)
    finally:
        memory.close()


def test_an_engine_records_history_through_its_writer_processes(make_settings, db_url: str) -> None:
    from scheduler_core.console import Console
    from scheduler_core.engine import Engine

    engine = Engine(make_settings(db_url))
    engine.start()
    try:
        writers = (engine.history, engine.jobstore)
        # The jobstore's starts with the engine: a run due at once waits for its claim, and so for that process.
        wait_for(lambda: isinstance(engine.jobstore._store_writer, ProcessWriter) and engine.jobstore._store_writer.pid,
                 message="the jobstore's writer process")
        Console(engine).add_job({"id": "p", "func": "tests.sample_jobs:add", "args": [1, 2], "trigger": "interval",
                                 "seconds": 1})
        wait_for(lambda: engine.flush() and len(outcomes(engine.store, "p")) >= 2, message="two recorded runs")
        assert engine.settings.writer_process
        children = [w._store_writer.pid for w in writers if isinstance(w._store_writer, ProcessWriter)]
        assert len(children) == 2 and all(children) and os.getpid() not in children
        # The history child runs behind the scheduler's threads for a CPU (niceness is capped at 19); the
        # jobstore's, whose claims a run may wait for, does not.
        history_child, jobstore_child = children
        assert os.getpriority(os.PRIO_PROCESS, history_child) == min(19, os.nice(0) + WRITER_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, jobstore_child) == os.nice(0)
        # and in the idle class, which a waking scheduler thread preempts at once
        assert os.sched_getscheduler(history_child) == os.SCHED_IDLE
        assert os.sched_getscheduler(jobstore_child) == os.SCHED_OTHER
    finally:
        engine.stop(timeout=5)
    assert not any(alive(pid) for pid in children)


# It occupies every CPU and needs the idle-class child to get one before that (starvation is seen after 0.05 s):
# another pytest worker's load breaks that premise, so scripts/test runs it alone, after the parallel part.
@pytest.mark.exclusive
def test_a_background_writer_starved_of_cpu_leaves_the_idle_class_and_loses_nothing(
        store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ProcessWriter, "STARVED_AFTER", 0.05)
    writer = ProcessWriter(store, "starved", niceness=WRITER_NICENESS, background=True)
    hogs: list[subprocess.Popen[bytes]] = []

    def stop_hogs_once_restarted() -> None:
        wait_for(lambda: "instead of the idle class" in caplog.text, timeout=30, message="the starved child noticed")
        for hog in hogs:
            hog.kill()

    try:
        writer.insert_runs([run_row("s", 1000.0, "success")])
        idle_child = writer.pid
        assert idle_child and os.sched_getscheduler(idle_child) == os.SCHED_IDLE
        # Every CPU busy at normal priority: the idle class gets almost none (a write took 28 s here).
        hogs += [subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"],
                                  stdout=subprocess.PIPE) for _ in range(os.cpu_count() or 2)]
        for hog in hogs:
            assert hog.stdout and hog.stdout.readline()  # started
        wait_for(lambda: all((_cpu_state(hog.pid) or ("", 0.0))[1] > 0.2 for hog in hogs),
                 message="the hogs to be spinning")
        stopper = threading.Thread(target=stop_hogs_once_restarted)
        with caplog.at_level(logging.WARNING, logger="scheduler_core.writer"):
            stopper.start()
            started = time.monotonic()
            # A batch long enough to need more than the first moment of CPU an idle-class process gets on waking.
            # The new child writes it: the caller sees one call that succeeded.
            assert writer.insert_runs([run_row("s", 2000.0 + i, "success") for i in range(2000)]) == (2000, [])
            stopper.join()
        assert time.monotonic() - started < 20  # not the starved child's pace
        assert not alive(idle_child)
        assert os.sched_getscheduler(writer.pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, writer.pid) == min(19, os.nice(0) + WRITER_NICENESS)
        writer.insert_runs([run_row("s", 5000.0, "success")])
        recorded = outcomes(store, "s")
        assert len(recorded) == 2002 and {1000.0, 2000.0, 3999.0, 5000.0} <= set(recorded)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        writer.close()


def test_history_rows_resent_after_a_writer_died_are_not_taken_for_second_runs(store: Store) -> None:
    row = run_row("r", 1000.0, "success")
    assert store.insert_runs([row]) == (1, [])
    # Written by a child killed before it answered, then sent again: the same row, not a second run.
    assert store.insert_runs([dict(row)], resent=True) == (1, [])
    # A second run of the same job and time is still a duplicate, resent or not.
    again = run_row("r", 1000.0, "success")
    written, duplicates = store.insert_runs([again], resent=True)
    assert written == 0 and [(d["job_id"], d["scheduled_at"]) for d in duplicates] == [("r", 1000.0)]
    assert outcomes(store, "r") == {1000.0: "success"}


def test_a_batch_retried_after_its_child_died_unanswered_is_not_taken_for_second_runs(
        store: Store, writer: ProcessWriter) -> None:
    rows = [run_row("u", 1000.0 + i, "success") for i in range(3)]
    writer.open()
    # The child commits the batch and is killed before it answers (here: the rows written as it would have, then
    # the kill), so the caller gets WriterGone and retries the same rows.
    assert store.insert_runs(rows) == (3, [])
    os.kill(writer.pid, signal.SIGKILL)
    with pytest.raises(WriterGone):
        writer.insert_runs(rows)
    assert writer.insert_runs(rows) == (3, [])
    # Answered calls are not marked: a real second run is still reported.
    written, duplicates = writer.insert_runs([run_row("u", 1000.0, "success")])
    assert written == 0 and len(duplicates) == 1
    assert len(outcomes(store, "u")) == 3


def test_a_jobstore_whose_writer_thread_is_not_running_writes_on_flush_from_the_caller(store: Store) -> None:
    from scheduler_core.jobstore import SpecJobStore

    jobstore = SpecJobStore(store, make_writer=lambda: ProcessWriter(store, "never-started"))
    store.insert_job("j", "{}", None, paused=False)
    jobstore._queue("j", 2000.0)  # as the scheduler loop does when it moves a job's next run time
    assert jobstore.flush()
    assert store.load_jobs()[0].next_run_time == 2000.0
