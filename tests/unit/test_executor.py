"""ClaimingExecutor's own thread pool: bounded, reused, drains on shutdown, survives its own bugs."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
from apscheduler.schedulers.background import BackgroundScheduler

from scheduler_core.executor import ClaimingExecutor
from tests.conftest import wait_for

WAIT = 10.0


class Probe:
    """A job that records which thread ran it and how many ran at once, and can be held until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.threads: set[str] = set()
        self.done = 0
        self.release = threading.Event()

    def __call__(self) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)
        self.release.wait(WAIT)
        with self.lock:
            self.running -= 1
            self.done += 1


def scheduler_with(executor: ClaimingExecutor) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(executors={"default": executor}, timezone=timezone.utc,
                                    job_defaults={"misfire_grace_time": 3600})
    scheduler.start()
    return scheduler


def add_due_jobs(scheduler: BackgroundScheduler, probe: Probe, count: int) -> None:
    now = datetime.now(timezone.utc)
    for i in range(count):
        scheduler.add_job(probe, "date", run_date=now, id=f"j{i}")


def test_never_more_threads_than_max_workers_and_threads_are_reused() -> None:
    executor = ClaimingExecutor(3, claim=lambda job_id, at: True)
    scheduler = scheduler_with(executor)
    probe = Probe()
    try:
        add_due_jobs(scheduler, probe, 12)
        wait_for(lambda: probe.running == 3, message="3 runs going on")
        time.sleep(0.1)  # a fourth thread, if one were started, would show up now
        assert probe.running == 3
        probe.release.set()
        wait_for(lambda: probe.done == 12, message="all 12 runs")
        assert probe.peak == 3
        assert len(probe.threads) == 3
        assert len(executor._threads) == 3
    finally:
        probe.release.set()
        scheduler.shutdown()


def test_an_idle_thread_takes_the_next_run_instead_of_a_new_thread() -> None:
    executor = ClaimingExecutor(5, claim=lambda job_id, at: True)
    scheduler = scheduler_with(executor)
    probe = Probe()
    probe.release.set()
    try:
        for i in range(4):
            scheduler.add_job(probe, "date", run_date=datetime.now(timezone.utc), id=f"j{i}")
            # Its thread is counted idle again when the next submit settles the finished run.
            wait_for(lambda: probe.done == i + 1 and not executor.running_instances(), message=f"run {i} to finish")
        assert len(executor._threads) == 1
    finally:
        scheduler.shutdown()


def test_shutdown_without_wait_still_starts_queued_runs_then_ends_the_threads() -> None:
    executor = ClaimingExecutor(2, claim=lambda job_id, at: True)
    scheduler = scheduler_with(executor)
    probe = Probe()
    add_due_jobs(scheduler, probe, 6)
    wait_for(lambda: probe.running == 2, message="2 runs going on")
    scheduler.shutdown(wait=False)
    probe.release.set()
    wait_for(lambda: probe.done == 6, message="all 6 runs, queued ones included")
    for thread in executor._threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        executor._do_submit_job(None, [])  # type: ignore[arg-type]


def test_a_refused_claim_does_not_run_and_frees_the_slot() -> None:
    refused = {"j0"}
    executor = ClaimingExecutor(2, claim=lambda job_id, at: job_id not in refused)
    scheduler = scheduler_with(executor)
    probe = Probe()
    probe.release.set()
    executed: list[str] = []
    scheduler.add_listener(lambda event: executed.append(event.job_id), EVENT_JOB_EXECUTED)
    try:
        add_due_jobs(scheduler, probe, 3)
        wait_for(lambda: probe.done == 2, message="the 2 claimed runs")
        wait_for(lambda: not executor.running_instances(), message="every run's slot freed")
        assert sorted(executed) == ["j1", "j2"]
    finally:
        scheduler.shutdown()


def test_a_failure_outside_the_job_frees_the_slot_and_keeps_the_thread(caplog: pytest.LogCaptureFixture) -> None:
    def on_start(job_id: str, at: datetime) -> None:
        if job_id == "j0":
            raise RuntimeError("bookkeeping bug")

    executor = ClaimingExecutor(1, claim=lambda job_id, at: True, on_start=on_start)
    scheduler = scheduler_with(executor)
    probe = Probe()
    probe.release.set()
    try:
        scheduler.add_job(probe, "date", run_date=datetime.now(timezone.utc), id="j0")
        wait_for(lambda: "bookkeeping bug" in caplog.text, message="the bookkeeping failure logged")
        wait_for(lambda: not executor.running_instances(), message="every run's slot freed")
        scheduler.add_job(probe, "date", run_date=datetime.now(timezone.utc), id="j1")
        wait_for(lambda: probe.done == 1, message="the next run on the same thread")
        assert len(executor._threads) == 1 and executor._threads[0].is_alive()
    finally:
        scheduler.shutdown()


def test_runs_past_their_grace_time_are_missed_and_failures_are_errors(caplog: pytest.LogCaptureFixture) -> None:
    """What APScheduler's run_job did, which the executor now does itself (F19): the same events and log lines."""
    executor = ClaimingExecutor(2, claim=lambda job_id, at: True)
    scheduler = scheduler_with(executor)
    events: list[tuple[str, int, str | None]] = []
    scheduler.add_listener(lambda e: events.append((e.job_id, e.code, e.traceback)),
                           EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    probe = Probe()
    probe.release.set()

    def fails() -> None:
        raise ValueError("no such file")

    try:
        scheduler.add_job(probe, "date", run_date=datetime.now(timezone.utc) - timedelta(seconds=5), id="late",
                          misfire_grace_time=1)
        scheduler.add_job(fails, "date", run_date=datetime.now(timezone.utc), id="fails")
        wait_for(lambda: len(events) == 2, message="an outcome for both")
        outcomes = {job_id: (code, tb) for job_id, code, tb in events}
        assert outcomes["late"] == (EVENT_JOB_MISSED, None) and probe.done == 0
        assert outcomes["fails"][0] == EVENT_JOB_ERROR and 'raise ValueError("no such file")' in outcomes["fails"][1]
        logged = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("apscheduler")]
        assert any(level == "WARNING" and "was missed by" in message for _, level, message in logged)
        assert any(level == "ERROR" and "raised an exception" in message for _, level, message in logged)
        assert {name for name, _, _ in logged} == {"apscheduler.executors.default"}  # where run_job logged them
    finally:
        scheduler.shutdown()
