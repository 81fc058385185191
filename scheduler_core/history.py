"""Execution history: APScheduler listener -> bounded queue -> one batched writer thread -> the runs table.

The listener runs on scheduler and executor threads and only turns the event into a row and enqueues it. The writer
thread inserts in batches; when the database is down it keeps the rows (up to a bound) and retries, so a restart of
the database loses nothing that fits in the buffer, and anything dropped beyond it is counted and reported.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from apscheduler import events as aps

from .kinds import JobFailed, RunResult
from .store import Store
from .writer import LocalWriter, Writer

log = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()
_pid = os.getpid()  # read per run otherwise, a system call each time


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
TEXT_LIMIT = 8000
_MARKED, _FINISHED = object(), object()  # marks of a run going on: see HistoryRecorder._running

# The history writer's process yields a CPU to the scheduler's own threads. On 2 cores, a child and the database
# server busy with a batch otherwise held both while a run was due: in half the runs at 1,000 fires/s, 10 % of runs
# started 2-6 ms late (p99 15-28 ms); with the writer children at +10, none of 4 runs did (p99 2.0-3.4 ms). History
# rows are buffered and can wait; the jobstore's writes cannot always (runs due at once wait for their claims), so
# its process keeps this one's priority. Nor does it cost a burst of one-off runs: 0.88 x bare niced, 0.72 x
# not (six runs each, bench/README.md). On Linux it also runs in the idle class (writer.ProcessWriter's
# `background`), and at this niceness only once it is seen starved.
WRITER_NICENESS = 10


def _clip(text: str | None, limit: int = TEXT_LIMIT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return "…" + text[-limit:]


def run_row(
    job_id: str,
    scheduled_at: datetime | float,
    outcome: str,
    *,
    result: RunResult | None = None,
    exception: str | None = None,
    traceback: str | None = None,
) -> dict[str, Any]:
    """A runs-table row. Hostname and pid say which process ran it."""
    # Built in one go: this runs once per run on the worker thread, where every microsecond is the job's.
    scheduled = scheduled_at if isinstance(scheduled_at, float) else scheduled_at.timestamp()
    if result is None:
        started = finished = duration = return_value = output = exit_code = http_status = None
    else:
        started, finished = result.started_at.timestamp(), result.finished_at.timestamp()
        duration, return_value, exit_code, http_status = (result.duration, result.return_value, result.exit_code,
                                                          result.http_status)
        output = _clip(result.output)
    return {
        "job_id": job_id,
        "scheduled_at": scheduled,
        "host": HOSTNAME,
        "pid": _pid,
        "started_at": started,
        "finished_at": finished,
        "duration": duration,
        "outcome": outcome,
        "return_value": return_value,
        "exception": _clip(exception, 2000),
        "traceback": _clip(traceback),
        "output": output,
        "exit_code": exit_code,
        "http_status": http_status,
        "recorded_at": time.time(),
    }


def row_from_event(event: aps.JobEvent) -> dict[str, Any] | None:
    """The history row an APScheduler event stands for, or None if it is not an execution outcome."""
    code = event.code
    if code == aps.EVENT_JOB_EXECUTED:
        result = event.retval if isinstance(event.retval, RunResult) else None
        return run_row(event.job_id, event.scheduled_run_time, "success", result=result)
    if code == aps.EVENT_JOB_ERROR:
        exc = event.exception
        if isinstance(exc, JobFailed):
            outcome = "timeout" if exc.timed_out else "error"
            return run_row(
                event.job_id, event.scheduled_run_time, outcome, result=exc.result,
                exception=str(exc), traceback=exc.traceback or event.traceback,
            )
        return run_row(
            event.job_id, event.scheduled_run_time, "error",
            exception=f"{type(exc).__name__}: {exc}", traceback=event.traceback,
        )
    if code == aps.EVENT_JOB_MISSED:
        return run_row(event.job_id, event.scheduled_run_time, "missed", exception="run time missed")
    return None


class HistoryRecorder:
    """Owns the writer thread. `record(row)` is safe to call from any thread and never blocks on I/O."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        buffer_limit: int = 100_000,
        on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
        on_problem: Callable[[str], None] | None = None,
        make_writer: Callable[[], Writer] | None = None,
    ) -> None:
        self.store = store
        self._make_writer = make_writer or (lambda: LocalWriter(store))
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._queue: deque[dict[str, Any]] = deque(maxlen=buffer_limit)
        self._wake = threading.Event()
        self._asleep = False  # the writer waits with no timer: record() and run_started() must wake it
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._store_writer: Writer | None = None  # the writer thread's own, once it runs
        self._on_rows = on_rows
        self._on_problem = on_problem
        self.written = 0
        self.dropped = 0
        self.duplicates = 0
        self.failing_since: float | None = None
        # Runs going on, (job id, scheduled epoch) -> [start (monotonic), *marks]. A run gets its "running" row
        # once it has gone on for MARK_AFTER seconds, or before any later run of its job is written, so a process
        # taking over after a crash finds every run older than that in the history. No lock: the writer marking a
        # run (_MARKED) and the run ending (_FINISHED) each append, and the first mark decides whether the run has
        # a "running" row. One lock shared by every worker made a convoy (two thirds of the workers' time waiting
        # for it in a burst of one-off runs).
        self._running: dict[tuple[str, float], list] = {}
        self._record_now: set[str] = set()  # jobs whose runs going on get their "running" rows at once
        self.recorded_until: dict[str, float] = {}  # job id -> latest scheduled time with a durable row

    MARK_AFTER = 1.0

    def run_started(self, job_id: str, scheduled_at: float, has_row: bool = False) -> None:
        self._running[(job_id, scheduled_at)] = [time.monotonic(), _MARKED] if has_row else [time.monotonic()]
        if self._asleep:
            self._wake.set()  # it is due a "running" row after MARK_AFTER: the writer must watch the clock

    def run_finished(self, job_id: str, scheduled_at: float) -> bool:
        """Forget a run that ended; True if it has a "running" row (its outcome must update that row)."""
        entry = self._running.pop((job_id, scheduled_at), None)
        if entry is None:
            return False
        entry.append(_FINISHED)
        return entry[1] is _MARKED

    def _running_rows(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """"running" rows due now: runs going on for MARK_AFTER, and runs older than a row of their job in batch."""
        if not self._running:
            return []
        newest: dict[str, float] = {}
        for row in batch:
            if row["scheduled_at"] > newest.get(row["job_id"], -1.0):
                newest[row["job_id"]] = row["scheduled_at"]
        old = time.monotonic() - self.MARK_AFTER
        rows = []
        for (job_id, scheduled_at), entry in self._running.copy().items():
            if len(entry) == 1 and (entry[0] <= old or scheduled_at < newest.get(job_id, -1.0)
                                    or job_id in self._record_now):
                entry.append(_MARKED)
                if entry[1] is _MARKED:  # else the run finished first: its outcome is a row of its own
                    row = run_row(job_id, scheduled_at, "running")
                    row["started_at"] = time.time() - (time.monotonic() - entry[0])
                    rows.append(row)
        return rows

    def record_running_now(self, job_id: str, timeout: float = 5.0) -> bool:
        """Write "running" rows for `job_id`'s runs going on now, rather than MARK_AFTER from their start, and wait
        until they are durable. An edit calls this before it moves the job's claim: a process taking over after a
        crash finds runs of the old schedule only by their rows. False if that did not happen within `timeout`."""
        if not any(jid == job_id and len(entry) == 1 for (jid, _), entry in self._running.copy().items()):
            return True
        self._record_now.add(job_id)
        return self._wait_for_writer(lambda: job_id not in self._record_now, timeout)

    def _remember_written(self, batch: list[dict[str, Any]]) -> None:
        for row in batch:
            if row["scheduled_at"] > self.recorded_until.get(row["job_id"], -1.0):
                self.recorded_until[row["job_id"]] = row["scheduled_at"]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="carnation-history", daemon=True)
        self._thread.start()

    def record(self, row: dict[str, Any]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(row)
        # Wake the writer if it sleeps with nothing to do (it then waits flush_interval for a batch to gather),
        # and at once when a batch is full.
        if (self._asleep or len(self._queue) >= self.batch_size) and not self._wake.is_set():
            self._wake.set()  # (Event.set() locks and notifies even when already set: checked first, per run)

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is written (or timeout). True if the queue emptied."""
        return self._wait_for_writer(lambda: not self.pending, timeout)

    def _wait_for_writer(self, done: Callable[[], bool], timeout: float) -> bool:
        """Keep the writer awake until `done()` (checked after each of its rounds); False on timeout or if the
        writer is not running."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._idle.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def _take_batch(self) -> list[dict[str, Any]]:
        batch = []
        while self._queue and len(batch) < self.batch_size:
            batch.append(self._queue.popleft())
        self._in_flight = len(batch)
        return batch

    def _run(self) -> None:
        backoff = self.flush_interval
        self._store_writer = writer = self._make_writer()
        # Its process starts with the first batch (which waits ~1 s for its imports; history can): an engine that
        # never runs a job (a standby, a test) does not pay 0.7 s of CPU for it. The jobstore's starts at once.
        while not self._stopping.is_set():
            if self._queue or self._running or self.failing_since:
                self._wake.wait(self.flush_interval if not self.failing_since else backoff)
            else:
                # Nothing to write and no run to watch: sleep with no timer (an idle process does not wake ten
                # times a second) until record(), run_started(), flush() or stop(). The flag goes up before the
                # last look, so a row recorded meanwhile is either seen here or wakes us.
                self._asleep = True
                if not (self._queue or self._running or self._stopping.is_set()):
                    self._wake.wait()
                self._asleep = False
                self._wake.clear()
                if not self._stopping.is_set():
                    self._wake.wait(self.flush_interval)  # let a batch gather
            self._wake.clear()
            while True:
                batch = self._take_batch()
                recording_now = set(self._record_now)
                batch[:0] = self._running_rows(batch)
                if not batch:
                    self._record_now -= recording_now  # their runs ended meanwhile: nothing left to mark
                    break
                self._in_flight = len(batch)
                try:
                    inserted, duplicates = writer.insert_runs(batch)
                except Exception as exc:  # database down: keep the rows, in order, and retry
                    for row in reversed(batch):
                        self._queue.appendleft(row)
                    self._in_flight = 0
                    if self.failing_since is None:
                        self.failing_since = time.time()
                        log.error("cannot write run history (kept in memory, retrying): %s", exc)
                        if self._on_problem:
                            self._on_problem(f"history writes failing, {len(self._queue)} rows kept: {exc}")
                    backoff = min(max(backoff * 2, 0.5), 5.0)
                    break
                if self.failing_since is not None:
                    log.warning("run history writes recovered after %.1f s", time.time() - self.failing_since)
                    self.failing_since = None
                    backoff = self.flush_interval
                self.written += inserted
                if duplicates:
                    self.duplicates += len(duplicates)
                    for row in duplicates:
                        log.error("job %s ran twice for scheduled time %s", row["job_id"], row["scheduled_at"])
                self._in_flight = 0
                self._record_now -= recording_now
                self._remember_written(batch)
                if self._on_rows:
                    self._on_rows(batch)
                if len(batch) < self.batch_size:
                    # Caught up: gather the next batch for flush_interval. Writing again at once what came in during
                    # this write made batches of ~4 rows at 1,000 runs/s on PostgreSQL, and the per-batch cost
                    # (round trip, transaction, commit) took a fifth of a core in the writer and another in the server.
                    break
            with self._idle:
                self._idle.notify_all()
        writer.close()
