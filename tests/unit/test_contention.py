"""A run's path takes no lock that other threads take per run (bench/README F19): with ten workers and the scheduler
loop on one GIL, every such lock became a convoy in bursts (threads queued on it, most of the workers' time waiting).
Each test holds the lock in question from another thread and checks that runs still start, finish and report, or
plays out the race the lock used to settle."""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_ADDED, EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED

from scheduler_core.console import Console
from scheduler_core.engine import Engine, LockFreeDispatchScheduler
from scheduler_core.executor import ClaimingExecutor
from scheduler_core.history import HistoryRecorder
from tests.conftest import wait_for
from tests.unit.test_engine import interval_job
from tests.unit.test_executor import WAIT, Probe
from tests.unit.test_idle import _FakeStore


@contextmanager
def held_elsewhere(*locks: Any) -> Iterator[None]:
    """Hold `locks` from another thread for the duration of the block."""
    held, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        let_go.wait(WAIT)
        for lock in reversed(locks):
            lock.release()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(WAIT)
    try:
        yield
    finally:
        let_go.set()
        thread.join(WAIT)


def test_runs_start_finish_and_report_while_other_threads_hold_the_schedulers_locks() -> None:
    executor = ClaimingExecutor(2, claim=lambda job_id, at: True)
    scheduler = LockFreeDispatchScheduler(executors={"default": executor}, timezone=timezone.utc,
                                          job_defaults={"misfire_grace_time": 3600})
    executed: list[str] = []
    scheduler.add_listener(lambda event: executed.append(event.job_id), EVENT_JOB_EXECUTED)
    scheduler.start()
    probe = Probe()
    try:
        # One run first, so that every logger on the way has its level cached (a cache miss takes logging's lock).
        probe.release.set()
        scheduler.add_job(probe, "date", run_date=datetime.now(timezone.utc), id="warm")
        wait_for(lambda: executed == ["warm"], message="the first run")

        # APScheduler's run_job calls logging.getLogger() (logging's module lock) on every run, and its
        # _dispatch_event copies the listeners under the scheduler's lock.
        with held_elsewhere(logging._lock, scheduler._listeners_lock):  # type: ignore[attr-defined]
            scheduler.add_job(probe, "date", run_date=datetime.now(timezone.utc), id="started")
            wait_for(lambda: "started" in executed, timeout=5, message="a run started and reported")

        # A worker finishing took the executor's lock, which the scheduler loop holds while it submits.
        probe.release.clear()
        scheduler.add_job(probe, "date", run_date=datetime.now(timezone.utc), id="finishing")
        wait_for(lambda: probe.running == 1, message="the run going on")
        with held_elsewhere(executor._lock, scheduler._listeners_lock):
            probe.release.set()
            wait_for(lambda: "finishing" in executed, timeout=5, message="a run finished and reported")
        assert executor.running_instances() == {}
    finally:
        probe.release.set()
        scheduler.shutdown()


def test_max_instances_still_holds_with_finished_runs_settled_at_the_next_submit() -> None:
    executor = ClaimingExecutor(3, claim=lambda job_id, at: True)
    scheduler = LockFreeDispatchScheduler(executors={"default": executor}, timezone=timezone.utc,
                                          job_defaults={"misfire_grace_time": 3600, "max_instances": 1})
    scheduler.start()
    probe = Probe()
    try:
        job = scheduler.add_job(probe, "interval", seconds=3600, id="once-at-a-time")
        job.modify(next_run_time=datetime.now(timezone.utc))
        wait_for(lambda: probe.running == 1, message="the first run")
        scheduler.get_job("once-at-a-time").modify(next_run_time=datetime.now(timezone.utc))
        time.sleep(0.3)  # a second run, were it let through, would be going on now
        assert probe.running == 1 and executor.running_instances() == {"once-at-a-time": 1}
        probe.release.set()
        wait_for(lambda: probe.done == 1, message="the first run to end")
        scheduler.get_job("once-at-a-time").modify(next_run_time=datetime.now(timezone.utc))
        wait_for(lambda: probe.done == 2, message="the next run, once the first one ended")
    finally:
        probe.release.set()
        scheduler.shutdown()


def test_a_job_listing_reads_the_running_counts_once_not_once_per_job(console: Console, engine: Engine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The counts come from under the executor's lock, which the scheduler loop takes to submit every run: the
    console refreshing 100,000 jobs must not take it 100,000 times."""
    for i in range(5):
        console.add_job(interval_job(f"j{i}"))
    calls: list[int] = []
    read = engine.executor.running_instances
    monkeypatch.setattr(engine.executor, "running_instances", lambda: calls.append(1) or read())
    assert [view.running for view in console.list_jobs()] == [0] * 5
    assert len(calls) == 1


def test_listeners_added_and_removed_are_dispatched_to_from_the_snapshot() -> None:
    scheduler = LockFreeDispatchScheduler(timezone=timezone.utc)
    seen: list[str] = []

    def listener(event: Any) -> None:
        seen.append(event.job_id)

    scheduler.start(paused=True)
    try:
        scheduler.add_listener(listener, EVENT_JOB_ADDED)
        scheduler.add_job(print, "interval", seconds=60, id="a")
        scheduler.remove_listener(listener)
        scheduler.add_job(print, "interval", seconds=60, id="b")
        assert seen == ["a"]
    finally:
        scheduler.shutdown()


# --- the history's marks on a run going on: no lock between the workers and the writer ----------------------------
def _recorder() -> HistoryRecorder:
    return HistoryRecorder(_FakeStore())  # type: ignore[arg-type]  # not started: the test plays the writer


def _make_old(recorder: HistoryRecorder, key: tuple[str, float]) -> None:
    recorder._running[key][0] -= HistoryRecorder.MARK_AFTER + 1  # going on for longer than MARK_AFTER


def test_a_run_marked_running_by_the_writer_first_updates_that_row_when_it_ends() -> None:
    recorder = _recorder()
    recorder.run_started("j", 100.0)
    _make_old(recorder, ("j", 100.0))
    rows = recorder._running_rows([])
    assert [(r["job_id"], r["scheduled_at"], r["outcome"]) for r in rows] == [("j", 100.0, "running")]
    assert recorder._running_rows([]) == []  # marked once
    assert recorder.run_finished("j", 100.0) is True


@pytest.mark.parametrize("ends", ["after the writer's snapshot", "between the writer's look and its mark"])
def test_a_run_that_ends_while_the_writer_looks_at_it_gets_no_running_row(ends: str) -> None:
    recorder = _recorder()
    recorder.run_started("j", 100.0)
    _make_old(recorder, ("j", 100.0))
    ended: list[bool] = []

    def end_the_run() -> None:  # what the worker does when the run returns
        if not ended:
            ended.append(recorder.run_finished("j", 100.0))

    class EndsAtSnapshot(dict):
        def copy(self) -> dict:
            snapshot = dict(self)
            end_the_run()
            return snapshot

    class EndsAtLook(list):
        def __len__(self) -> int:
            length = super().__len__()
            end_the_run()
            return length

    if ends == "after the writer's snapshot":
        recorder._running = EndsAtSnapshot(recorder._running)
    else:
        recorder._running[("j", 100.0)] = EndsAtLook(recorder._running[("j", 100.0)])
    assert recorder._running_rows([]) == []  # its outcome is a row of its own; a "running" row would duplicate it
    assert ended == [False]


def test_a_run_started_with_a_running_row_is_not_marked_again() -> None:
    recorder = _recorder()
    recorder.run_started("j", 100.0, has_row=True)
    _make_old(recorder, ("j", 100.0))
    assert recorder._running_rows([]) == []
    assert recorder.run_finished("j", 100.0) is True
    assert recorder.run_finished("j", 100.0) is False  # forgotten once ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timer slack is Linux's")
def test_the_scheduler_loop_waits_for_the_next_fire_without_timer_slack() -> None:
    """Linux ends a thread's timed wait up to its timer slack (50 µs by default) late: every run started that much
    after its time. Read on the loop thread itself (a submission event is dispatched there)."""
    get_timer_slack = ctypes.CDLL(None).prctl
    seen: list[tuple[str, int]] = []
    scheduler = LockFreeDispatchScheduler(executors={"default": ClaimingExecutor(1, claim=lambda job_id, at: True)},
                                          timezone=timezone.utc)
    scheduler.add_listener(
        lambda event: seen.append((threading.current_thread().name, get_timer_slack(30, 0, 0, 0, 0))),
        EVENT_JOB_SUBMITTED)
    scheduler.start()
    try:
        scheduler.add_job(len, "date", run_date=datetime.now(timezone.utc), args=[()])
        wait_for(lambda: seen, message="the run submitted")
    finally:
        scheduler.shutdown()
    assert seen == [("APScheduler", 1)]  # PR_GET_TIMERSLACK, in ns
    assert get_timer_slack(30, 0, 0, 0, 0) > 1  # other threads keep theirs
