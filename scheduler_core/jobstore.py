"""The APScheduler job store over carnation's JSON rows: memory decides what is due, SQL is the record.

APScheduler 3's SQLAlchemyJobStore queries, unpickles and commits on its single loop thread for every fire. Here the
loop works on MemoryJobStore's sorted list (APScheduler's own code, unchanged), and every change it makes (a new next
run time, a finished job) is queued and written behind, in batches, by a writer thread. The loop never waits on the
database; `flush()` makes the writes durable when it matters (an edit, shutdown).

Writing a next run time also claims that run (`claimed_until`, store.py): a run may start only once its claim is
durable. The claim is normally written about one interval ahead, so it costs the run nothing; a run due sooner than
the writer's next batch waits for it (`wait_claimed`), a group commit shared by every run waiting then.

A job firing at least twice within `claim_ahead_seconds` (an interval trigger without jitter, whose coming fire
times are exact) is claimed about that far ahead, and the fires that claim covers write nothing: at 10,000 jobs
every 10 s that is 1,000 row updates a second fewer, the database work that made the late runs (bench/README.md,
12-04 evening). Its stored next run time then lags by up to that long (one and a half times after its first claim):
readers in other processes advance it while the claim covers it (console.py), and a process taking over continues
from the history (engine.py). Each job renews its claim at points of its own in the minute (`claim_horizon`): jobs
sharing a start do not renew together.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from datetime import datetime

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import datetime_to_utc_timestamp

from .executor import ClaimFailed
from .store import Store, to_epoch
from .writer import LocalWriter, Writer

log = logging.getLogger(__name__)


class SpecJob(Job):
    """An APScheduler Job whose args are (JobSpec,). Reports runs it drops by coalescing, which APScheduler 3 does
    silently: an operator must be told what did not run."""

    __slots__ = ()

    def _get_run_times(self, now: datetime) -> list[datetime]:
        run_times = super()._get_run_times(now)
        if self.coalesce and len(run_times) > 1:
            for run_time in run_times[:-1]:
                self._scheduler._dispatch_event(
                    JobExecutionEvent(EVENT_JOB_MISSED, self.id, self._jobstore_alias, run_time)
                )
        return run_times


class SpecJobStore(MemoryJobStore):
    CLAIM_AHEAD_RUNS = 600  # at most: a sub-second job's takeover walks its fires since the last recorded one

    def __init__(self, store: Store, flush_interval: float = 0.2,
                 make_writer: Callable[[], Writer] | None = None, claim_ahead_seconds: float = 60.0) -> None:
        super().__init__()
        self.store = store
        self.claim_ahead_seconds = claim_ahead_seconds  # of a frequent job's fires, claimed in one write
        self._make_writer = make_writer or (lambda: LocalWriter(store))
        self.flush_interval = flush_interval
        self._pending: dict[str, float | None | object] = {}  # id -> next run epoch, or _DELETE
        self._claim_requests: dict[str, float] = {}  # id -> run to claim without moving the next run time
        self.claimed: dict[str, float] = {}  # id -> durable claimed_until
        # Finished one-off jobs, id -> last run epoch: their row goes once that run's outcome is durable, so a
        # process taking over after a crash still sees what was claimed.
        self.finished: dict[str, float] = {}
        self._recorded_finished: set[str] = set()  # finished one-offs whose last outcome is durable: rows to delete
        self.is_recorded: Callable[[str, float], bool] = lambda job_id, at: True
        self._pending_lock = threading.Lock()
        self._work = threading.Event()  # something to write: the writer sleeps without a timeout otherwise
        self._wake = threading.Event()  # someone waits for the write: skip gathering a batch
        self._stopping = threading.Event()
        self._written = threading.Condition()
        self._writer: threading.Thread | None = None
        self._store_writer: Writer | None = None  # the writer thread's own, once it runs
        self.write_errors = 0

    # --- loading ------------------------------------------------------------------------------------------------
    def load(self, jobs: list[tuple[Job, float | None]]) -> None:
        """Put (job, durable claimed_until) read from the database into memory without writing them back, except
        the claims of next run times not claimed yet."""
        unclaimed = []
        for job, claimed_until in jobs:
            job._jobstore_alias = self._alias
            if claimed_until is not None:
                self.claimed[job.id] = claimed_until
            nrt = to_epoch(job.next_run_time)
            if nrt is not None and (claimed_until is None or claimed_until < nrt):
                unclaimed.append((job.id, nrt))
        if not self._jobs:
            # One sort instead of one insort per job: seconds saved at 100,000 jobs.
            self._jobs = sorted(((job, datetime_to_utc_timestamp(job.next_run_time)) for job, _ in jobs), key=_order)
            self._jobs_index = {job.id: (job, ts) for job, ts in self._jobs}
        else:
            for job, _ in jobs:
                MemoryJobStore.add_job(self, job)
        with self._pending_lock:
            for job_id, nrt in unclaimed:
                self._pending.setdefault(job_id, nrt)
        if unclaimed:
            self._work.set()

    def start(self, scheduler, alias):  # type: ignore[no-untyped-def]
        super().start(scheduler, alias)
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="carnation-jobstore", daemon=True)
            self._writer.start()

    # --- APScheduler's interface: memory now, SQL behind ---------------------------------------------------------
    def add_job(self, job: Job) -> None:
        super().add_job(job)
        self._queue(job.id, to_epoch(job.next_run_time))

    def update_job(self, job: Job) -> None:
        super().update_job(job)
        at = to_epoch(job.next_run_time)
        with self._pending_lock:
            # Claimed ahead already, durably, with no other change waiting: nothing to write (the stored next run
            # time lags; see the module's docstring).
            if at is not None and job.id not in self._pending and self.claimed.get(job.id, -1.0) >= at:
                return
            self._pending[job.id] = at
        self._signal_work()

    def claim_ahead(self, job_id: str, at: float) -> float:
        """How far a write of next run time `at` claims (`claim_horizon`)."""
        entry = self._jobs_index.get(job_id)
        return self.claim_horizon(job_id, entry[0].trigger, at) if entry is not None else at

    def claim_horizon(self, job_id: str, trigger: BaseTrigger, at: float) -> float:
        """How far a write of the job's fire at `at` (epoch) claims: its last fire before the job's next renewal
        point, or `at` itself where its coming fire times are not known exactly (not an interval trigger, jitter)
        or it fires less often than twice in claim_ahead_seconds.

        A job's renewal points are claim_ahead_seconds apart, offset by a hash of its id, and a claim reaches the
        first one more than half claim_ahead_seconds ahead. So the fire that renews a claim (the first at or past a
        point) claims up to the next point, claim_ahead_seconds on; only a job's first claim reaches half to one
        and a half times as far. Ending every claim claim_ahead_seconds after its write instead kept jobs that share
        a start renewing together once a minute: 1,000 writes a second for 10 s at 10,000 jobs every 10 s, and the
        late runs of that window (bench/README.md, 12-05). Spread, the same writes come ~170 a second.

        Computed, not walked (a walk of 200 jobs x 6 fires per batch held the GIL for milliseconds, and runs due
        meanwhile waited): the loop finds each fire as the previous one's timestamp plus the interval, rounded to
        the microsecond, and an interval is a whole number of microseconds, so the k-th fire is exactly at + k x
        interval in microseconds, which is how datetime.timestamp() gives it back."""
        if (type(trigger) is not IntervalTrigger or trigger.jitter is not None
                or trigger.interval_length * 2 > self.claim_ahead_seconds):
            return at
        at_us, step_us = round(at * 1_000_000), round(trigger.interval_length * 1_000_000)
        horizon_us = round(self.claim_ahead_seconds * 1_000_000)
        phase_us = zlib.crc32(job_id.encode()) % horizon_us  # the same in every process
        # in (at + horizon / 2, at + 3 horizon / 2]
        renewal_us = phase_us + ((at_us + horizon_us // 2 - phase_us) // horizon_us + 1) * horizon_us
        fires = min((renewal_us - 1 - at_us) // step_us, self.CLAIM_AHEAD_RUNS)  # the last fire before it
        if trigger.end_date is not None:
            end_us = round(trigger.end_date.timestamp() * 1_000_000)
            fires = max(0, min(fires, (end_us - at_us) // step_us))
        return (at_us + fires * step_us) / 1_000_000

    def remove_job(self, job_id: str) -> None:
        """APScheduler removes a job whose trigger is done, right after submitting its last run."""
        job = self.lookup_job(job_id)
        super().remove_job(job_id)
        last_run = to_epoch(job.next_run_time) if job is not None else None
        if last_run is None:
            self._queue(job_id, _DELETE)
            return
        with self._pending_lock:
            self._pending.pop(job_id, None)
            # Under the lock: runs_recorded() either sees this entry or ran before, when is_recorded() sees it.
            if self.is_recorded(job_id, last_run):
                self._recorded_finished.add(job_id)
            else:
                self.finished[job_id] = last_run
        self._signal_work()

    def runs_recorded(self, rows: list[dict]) -> None:
        """History rows became durable (called after `is_recorded` says so): finished one-off jobs whose last run
        is among them can have their row deleted. Told, rather than scanning every finished job per write."""
        found = False
        with self._pending_lock:  # the emptiness check too: see remove_job
            if not self.finished:
                return
            for row in rows:
                last_run = self.finished.get(row["job_id"])
                if last_run is not None and row["scheduled_at"] >= last_run:
                    del self.finished[row["job_id"]]
                    self._recorded_finished.add(row["job_id"])
                    found = True
        if found:
            self._signal_work()

    def remove_all_jobs(self) -> None:
        for job in self.get_all_jobs():
            self._queue(job.id, _DELETE)
        super().remove_all_jobs()

    def forget(self, job_id: str) -> None:
        """Drop a job from memory only (another process changed or removed it; the row is already right)."""
        if self.lookup_job(job_id) is not None:
            MemoryJobStore.remove_job(self, job_id)
        with self._pending_lock:
            self._pending.pop(job_id, None)
            self.finished.pop(job_id, None)
            self._recorded_finished.discard(job_id)
            self._claim_requests.pop(job_id, None)
            # A job added again under this id starts with no claim in its row: a claim held here (up to a minute
            # ahead) must not let its runs start before their own is written.
            self.claimed.pop(job_id, None)

    def clear_memory(self) -> None:
        """Forget every job without touching the database (this process stops executing)."""
        self.flush()
        MemoryJobStore.remove_all_jobs(self)
        with self._pending_lock:
            self.claimed.clear()
            self.finished.clear()
            self._recorded_finished.clear()
            self._claim_requests.clear()

    def shutdown(self) -> None:
        self.flush()
        self._stopping.set()
        self._work.set()
        self._wake.set()
        if self._writer:
            self._writer.join(5)
        super().shutdown()

    # --- claims -------------------------------------------------------------------------------------------------
    def wait_claimed(self, job_id: str, epoch: float, timeout: float = 10.0) -> None:
        """Return once the run of `job_id` at `epoch` is durably claimed; ClaimFailed if the write failed or did
        not happen within `timeout`."""
        if self.claimed.get(job_id, -1.0) >= epoch:
            return
        with self._pending_lock:
            if self._claim_requests.get(job_id, -1.0) < epoch:
                self._claim_requests[job_id] = epoch
        errors = self.write_errors
        with self._written:
            self._work.set()
            self._wake.set()
            self._written.wait_for(
                lambda: self.claimed.get(job_id, -1.0) >= epoch or self.write_errors != errors, timeout)
        if self.claimed.get(job_id, -1.0) < epoch:
            raise ClaimFailed("database unavailable" if self.write_errors != errors
                              else f"its claim was not written within {timeout:g} s")

    # --- write-behind -------------------------------------------------------------------------------------------
    def _queue(self, job_id: str, value: float | None | object) -> None:
        with self._pending_lock:
            self._pending[job_id] = value  # newer state of the same job replaces the older: one write per job
        self._signal_work()

    def _signal_work(self) -> None:
        # Event.set() takes a lock and notifies even when the event is set already, and the scheduler loop gets
        # here on every fire. Safe: the writer clears the event before it takes the batch this call added to.
        if not self._work.is_set():
            self._work.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far. True when nothing is left pending."""
        if self._writer is None or not self._writer.is_alive():
            self._write_pending(None)  # no writer thread (not started, or shut down): from this one
            return not self._pending
        with self._written:
            self._work.set()
            self._wake.set()
            return self._written.wait_for(
                lambda: not self._pending and not self._recorded_finished and not self._writing, timeout)

    def finishing(self, job_id: str) -> bool:
        """A one-off job that has run its last run, whose row is still there until that run's outcome is durable."""
        return job_id in self.finished or job_id in self._recorded_finished

    _writing = False

    def _write_pending(self, writer: Writer | None) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, {}
            claims, self._claim_requests = self._claim_requests, {}
            done, self._recorded_finished = list(self._recorded_finished), set()
            self._writing = bool(batch or claims or done)
        if not self._writing:
            return
        changes = [(job_id, value, None if value is None else self.claim_ahead(job_id, value))  # type: ignore[arg-type]
                   for job_id, value in batch.items() if value is not _DELETE]
        deletes = [job_id for job_id, value in batch.items() if value is _DELETE] + done
        try:
            write = writer.write_next_run_times if writer else self.store.write_next_run_times
            write(changes, deletes, list(claims.items()))  # type: ignore[arg-type]
        except Exception as exc:
            self.write_errors += 1
            log.warning("next run times not written yet (retrying): %s", exc)
            with self._pending_lock:
                # Keep what failed unless a newer state arrived meanwhile.
                for job_id, value in batch.items():
                    self._pending.setdefault(job_id, value)
                for job_id, at in claims.items():
                    if self._claim_requests.get(job_id, -1.0) < at:
                        self._claim_requests[job_id] = at
                self._recorded_finished.update(done)
            raise
        finally:
            self._writing = False
        with self._pending_lock:
            for job_id, _, claimed_until in changes:
                if claimed_until is not None:
                    self.claimed[job_id] = claimed_until
            for job_id, at in claims.items():
                if self.claimed.get(job_id, -1.0) < at:
                    self.claimed[job_id] = at
            for job_id in deletes:
                self.claimed.pop(job_id, None)

    def _write_loop(self) -> None:
        self._store_writer = self._make_writer()
        self._store_writer.open()
        while not self._stopping.is_set():
            self._work.wait()
            self._wake.wait(self.flush_interval)  # gather a batch, unless someone waits for it
            self._work.clear()
            self._wake.clear()
            try:
                self._write_pending(self._store_writer)
            except Exception:
                self._stopping.wait(1.0)
            with self._written:
                self._written.notify_all()
            if self._pending or self._claim_requests or self._recorded_finished:  # left by a failed write
                self._work.set()
        self._store_writer.close()


def _order(entry: tuple[Job, float | None]) -> tuple[bool, float, str]:
    # MemoryJobStore's order: by next run time, paused (None) last, then by id.
    job, ts = entry
    return (ts is None, ts or 0.0, job.id)


_DELETE = object()
