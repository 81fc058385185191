"""The engine: APScheduler 3.11's BackgroundScheduler over carnation's store, history and event fan-out.

One Engine per process. It always reads and writes the database; it executes jobs only while it holds the
executor role (allowed host, and the lease once several processes share a database). Every change goes to the
database first, then to the in-memory scheduler, so a refused change leaves both untouched.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatch
from typing import Any

import sqlalchemy as sa
from apscheduler import events as aps
from apscheduler.events import JobSubmissionEvent
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from . import kinds
from .config import Settings
from .errors import FieldError, JobNotFound, NotLeader, SpecError
from .events import EVENT_NAMES, EventBus, SchedulerEvent
from .executor import ClaimingExecutor
from .history import HOSTNAME, HistoryRecorder, row_from_event, run_row
from .history import WRITER_NICENESS as HISTORY_WRITER_NICENESS
from .jobstore import SpecJob, SpecJobStore
from .spec import JobSpec, build_trigger, from_flat
from .store import JobRow, Store, from_epoch, jobs_table, to_epoch
from .writer import make_writer

log = logging.getLogger(__name__)

PR_SET_TIMERSLACK = 29  # <linux/prctl.h>
JOB_EVENTS_WITH_ROWS = aps.EVENT_JOB_EXECUTED | aps.EVENT_JOB_ERROR | aps.EVENT_JOB_MISSED


class LockFreeDispatchScheduler(BackgroundScheduler):
    """BackgroundScheduler whose event dispatch reads a snapshot of the listeners instead of copying the list under
    a lock: every run's events are dispatched from the worker that ran it and from the scheduler loop, and that lock,
    taken ~3 times per run by 11 threads, made a convoy in bursts (most of the workers' time spent waiting for it).
    Its loop thread waits for the next fire without timer slack (precise_timed_waits)."""

    _listener_snapshot: tuple = ()

    def add_listener(self, callback: Any, mask: int = aps.EVENT_ALL) -> None:
        with self._listeners_lock:  # an RLock: super() takes it again
            super().add_listener(callback, mask)
            self._listener_snapshot = tuple(self._listeners)

    def remove_listener(self, callback: Any) -> None:
        with self._listeners_lock:
            super().remove_listener(callback)
            self._listener_snapshot = tuple(self._listeners)

    def _main_loop(self) -> None:
        precise_timed_waits()
        super()._main_loop()

    def _dispatch_event(self, event: aps.SchedulerEvent) -> None:
        for callback, mask in self._listener_snapshot:
            if event.code & mask:
                try:
                    callback(event)
                except BaseException:
                    self._logger.exception("Error notifying listener")


def precise_timed_waits() -> None:
    """Let this thread's timed waits end at their deadline: Linux ends them up to the thread's timer slack later
    (50 µs by default, so that timers can share a wake-up). The scheduler loop waits until the next fire time; every
    run was starting up to 50 µs late for the sake of a saving that one wake-up per fire does not get."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)  # in ns; 0 would mean the default
    except (OSError, AttributeError):
        pass


def host_allowed(allowed_hosts: list[str], host: str = HOSTNAME) -> bool:
    """Flask-APScheduler's allowed_hosts: '*' or host names (shell-style patterns allowed)."""
    return any(pattern == "*" or fnmatch(host, pattern) for pattern in allowed_hosts)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic cyclic collection within: loading 100,000 jobs set off one full collection after another, each
    walking everything loaded so far (2 s of a 4 s start), for garbage that is nearly all freed by reference count.
    Left as it was found (a caller may have it off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Engine:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        for directory in reversed(settings.python_path):
            # `module:func` references resolve against these, as gunicorn and celery do with the working directory.
            path = os.path.abspath(directory)
            if path not in sys.path:
                sys.path.insert(0, path)
        self.store = store or Store(settings.db_url)
        self.events = EventBus()
        self.host = HOSTNAME
        self.pid = os.getpid()
        self.may_execute = host_allowed(settings.allowed_hosts)
        self.holder = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.wants_to_execute = False
        self.executing = False
        self._scheduler_started = False
        self._last_renewal = 0.0
        self._next_prune = 0.0
        self._pruner: threading.Thread | None = None
        self.started = False
        self.broken: dict[str, str] = {}  # job id -> why its row cannot be scheduled
        self.last_runs: dict[str, dict[str, Any]] = {}
        self.db_error: str | None = None
        self._seen_seq = 0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._lock = threading.RLock()  # serialises this process's edits against the change poller
        in_child = settings.writer_process
        self.history = HistoryRecorder(self.store, on_rows=self._remember_runs, on_problem=self._database_problem,
                                       make_writer=lambda: make_writer(self.store, "history", in_child,
                                                                         HISTORY_WRITER_NICENESS, background=True))
        self.jobstore = SpecJobStore(self.store, make_writer=lambda: make_writer(self.store, "jobstore", in_child),
                                     claim_ahead_seconds=settings.claim_ahead_seconds)
        self.jobstore.is_recorded = lambda job_id, at: self.history.recorded_until.get(job_id, -1.0) >= at
        self.executor = ClaimingExecutor(settings.workers, self._claim, on_start=self._run_started)
        self._manual_runs: set[tuple[str, float]] = set()  # run-now runs: claimed by a "running" row
        self.scheduler = LockFreeDispatchScheduler(
            jobstores={"default": self.jobstore},
            executors={"default": self.executor},
            job_defaults={
                "misfire_grace_time": settings.misfire_grace_time,
                "coalesce": settings.coalesce,
                "max_instances": 1,
            },
            timezone=settings.timezone,
        )
        self.scheduler.add_listener(self._on_aps_event, aps.EVENT_ALL)

    # --- life cycle -----------------------------------------------------------------------------------------
    def start(self, execute: bool = True) -> None:
        """Migrate the schema, upsert the predefined jobs, and execute jobs if this process may and can take the
        lease; otherwise stand by (and take over if the executing process goes away)."""
        self.store.migrate()
        self.sync_config_jobs()
        self.last_runs = self.store.last_runs()
        self.history.start()
        self._seen_seq = self.store.jobs_seq()
        self.wants_to_execute = execute and self.may_execute
        if self.wants_to_execute:
            self._try_take_over()
        if not self.executing:
            self._load_broken_only(self.store.load_jobs(jobs_table.c.broken.is_not(None)))
        self.started = True
        self._poller = threading.Thread(target=self._poll_loop, name="carnation-poller", daemon=True)
        self._poller.start()
        if not self.executing:
            self._publish("standby", message=self._standby_reason())

    def _standby_reason(self) -> str:
        if not self.may_execute:
            return f"{self.host} is not in allowed_hosts {self.settings.allowed_hosts}: console only"
        if not self.wants_to_execute:
            return "console only"
        holder = self.store.lease_holder()
        return f"standing by: {holder['host']} pid {holder['pid']} executes" if holder else "standing by"

    def stop(self, timeout: float | None = None) -> bool:
        """Stop gracefully: no new runs, wait for running ones up to `timeout`, write all history, hand the lease
        on. Returns False if some run was still going when the wait ended."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self._stop.set()
        if self._poller:
            self._poller.join(5)
        finished = True
        if self._scheduler_started:
            was_executing = self.executing
            self.executing = False
            self.scheduler.shutdown(wait=False)  # stops the loop and flushes next run times (jobstore.shutdown)
            deadline = time.monotonic() + timeout
            while self.running_count() and time.monotonic() < deadline:
                time.sleep(0.05)
            finished = self.running_count() == 0
            if not finished:
                log.warning("shutting down with %d run(s) still going", self.running_count())
            recorded = self.history.flush()
            if was_executing and finished and recorded:
                # Everything this process started is in the history, so a successor may start at once and run
                # what was claimed but not started. Otherwise the lease expires and the successor treats claimed
                # runs as possibly started.
                self._release_lease()
        self.history.stop()
        self.started = False
        return finished

    # --- the executor role: one process per database ----------------------------------------------------------
    def _try_take_over(self) -> bool:
        attempt = time.monotonic()
        grant = self.store.try_acquire_lease(self.holder, self.host, self.pid, self.settings.lease_seconds)
        if grant is None:
            return False
        self._last_renewal = attempt
        # The previous executor stopped starting runs by this time (it steps down 0.75 x lease after its last
        # heartbeat); None when it released the lease after recording everything it ran.
        started_by = (None if grant.previous_heartbeat is None
                      else grant.previous_heartbeat + 0.75 * self.settings.lease_seconds)
        with self._lock, collector_paused():
            abandoned = self.store.abandon_running(self.host, self.pid)
            self.last_runs = self.store.last_runs()
            handled = self.store.last_handled()
            self._seen_seq = self.store.jobs_seq()
            rows = self.store.load_jobs()
            maybe_started: list[dict[str, Any]] = []
            jobs = []
            for row, job in self._load_jobs(rows):
                job = self._skip_handled(job, row, handled.get(row.id), started_by, maybe_started)
                if job is not None:
                    jobs.append((job, row.claimed_until))
            if maybe_started:
                self.store.insert_runs(maybe_started)
                abandoned += len(maybe_started)
            jobs = self._claim_loaded(jobs, {row.id: row for row in rows})
            if abandoned:
                log.warning("%d run(s) of a stopped process never finished; recorded as abandoned", abandoned)
            self.jobstore.load(jobs)
            # What is loaded now lives as long as the process. Out of the cyclic collector's sight, it no longer
            # makes each full collection (which holds the GIL throughout) stop the scheduler: 86 ms with 1,000
            # jobs, and every job due meanwhile fired that late. Cost: a frozen object that later ends up in a
            # reference cycle is never freed (objects without cycles are, by their reference count).
            gc.freeze()
            self.executing = True
            if self._scheduler_started:
                self.scheduler.resume()
            else:
                self.scheduler.start()
                self._scheduler_started = True
        log.info("%s pid %d executes jobs", self.host, self.pid)
        self._publish("leader", message=f"{self.host} pid {self.pid} executes jobs")
        return True

    def _claim_loaded(self, jobs: list[tuple[SpecJob, float | None]],
                      rows: dict[str, JobRow]) -> list[tuple[SpecJob, float | None]]:
        """Claim, in a few statements, the loaded jobs' next run times that are as stored but not claimed yet (jobs
        added while no process executed, a database just migrated): 10,000 of them written one by one would hold
        up the first runs. A frequent job is claimed ahead as far as its fires would claim it (jobstore.py), or
        each job's first fire after a start would still write its row (1,000 writes a second for 10 s, at 10,000
        jobs every 10 s). Jobs whose next run time moved here are claimed by the write-behind as usual."""
        claims: dict[str, float] = {}
        ahead: list[tuple[str, float]] = []
        for job, claimed in jobs:
            at = to_epoch(job.next_run_time)
            if at is None or (claimed is not None and claimed >= at):
                continue
            if at == _to_microseconds(rows[job.id].next_run_time):
                claims[job.id] = until = self.jobstore.claim_horizon(job.id, job.trigger, at)
                if until > at:
                    ahead.append((job.id, until))
        if not claims:
            return jobs
        self.store.claim_stored_next_run_times(self._seen_seq, ahead)
        if self.store.jobs_seq() != self._seen_seq:
            return jobs  # an edit raced the claim: which rows it skipped is unknown, so claim them one by one
        return [(job, claims.get(job.id, claimed)) for job, claimed in jobs]

    MAX_ABANDONED_PER_JOB = 100

    def _skip_handled(self, job: SpecJob, row: JobRow, handled_at: float | None, started_by: float | None,
                      maybe_started: list[dict[str, Any]]) -> SpecJob | None:
        """Where a job continues when this process takes over. Runs the previous executor claimed and was due to
        start before it stopped, (last run in the history, min(claimed_until, started_by)], may have started:
        they get an "abandoned" row and are not run again. The job continues after them, or after its last
        recorded run if its stored next run time lags behind that."""
        if job.next_run_time is None:
            return job
        floor = _to_microseconds(handled_at)
        claimed_until = _to_microseconds(row.claimed_until)  # scheduled times are datetimes: exact to the µs
        if started_by is not None and claimed_until is not None:
            cutoff = min(claimed_until, started_by)
            if floor is None or cutoff > floor:
                times = set()
                if claimed_until <= started_by:
                    times.add(claimed_until)  # exact, even where jitter makes the trigger's times differ
                # Without a history row, a run can only be this recent: older ones got a "running" row
                # (HistoryRecorder.MARK_AFTER), and none starts later than its misfire grace time.
                grace = job.misfire_grace_time if job.misfire_grace_time is not None else 3600
                lower = started_by - self.settings.lease_seconds - HistoryRecorder.MARK_AFTER - 1 - grace
                if floor is not None and floor >= lower:
                    # Walk on from the last recorded run: a trigger knows its phase only from a previous fire.
                    times.update(t.timestamp() for t in self._fire_times(job.trigger, from_epoch(floor),
                                                                            from_epoch(cutoff)))
                log.debug("job %s: runs after %s claimed until %s may have started on the previous executor "
                          "(it stopped starting runs by %s): %d recorded as abandoned", job.id, handled_at,
                          claimed_until, started_by, len(times))
                for at in sorted(times):
                    maybe_started.append(run_row(job.id, at, "abandoned",
                                                 exception="its process stopped; it may have started"))
                floor = cutoff
        if floor is None or to_epoch(job.next_run_time) > floor:
            return job
        last = from_epoch(floor)
        nrt = job.trigger.get_next_fire_time(last, last + timedelta(microseconds=1))
        if nrt is None:
            self.store.delete_job(job.id)  # a one-off that already ran
            return None
        job.next_run_time = nrt.astimezone(self.scheduler.timezone)
        return job

    def _fire_times(self, trigger: BaseTrigger, previous: datetime, until: datetime) -> list[datetime]:
        """The trigger's fire times after the fire at `previous`, up to `until`; at most MAX_ABANDONED_PER_JOB
        of the latest."""
        times: deque[datetime] = deque(maxlen=self.MAX_ABANDONED_PER_JOB)
        for _ in range(100_000):
            fire = trigger.get_next_fire_time(previous, previous + timedelta(microseconds=1))
            if fire is None or fire > until or fire <= previous:
                break
            times.append(fire)
            previous = fire
        return list(times)

    def _step_down(self, reason: str) -> None:
        with self._lock:
            if not self.executing:
                return
            self.executing = False
            self.scheduler.pause()
            try:
                self.jobstore.clear_memory()
            except Exception:
                with self.scheduler._jobstores_lock:
                    MemoryJobStore.remove_all_jobs(self.jobstore)
        log.warning("stopped executing jobs: %s", reason)
        self._publish("standby", message=f"stopped executing: {reason}")

    def _keep_lease(self) -> None:
        if time.monotonic() - self._last_renewal < self.settings.lease_seconds / 4:
            return
        attempt = time.monotonic()  # before the heartbeat is written: this process's window ends no later
        try:
            held = self.store.renew_lease(self.holder)
        except Exception as exc:
            # Unreachable: keep executing from memory while the lease is surely ours, then step down so that a
            # standby which can reach the database may take over without two executors.
            if time.monotonic() - self._last_renewal > self.settings.lease_seconds * 0.75:
                self._step_down(f"database unreachable for too long ({exc})")
            raise
        if held:
            self._last_renewal = attempt
        else:
            self._step_down("another process took the lease")

    def _release_lease(self) -> None:
        try:
            self.store.release_lease(self.holder)
        except Exception as exc:
            log.warning("could not release the lease (a standby takes over when it expires): %s", exc)

    def _lease_surely_held(self) -> bool:
        # The window a process taking over assumes this one may still start runs in (see _try_take_over).
        return time.monotonic() - self._last_renewal < self.settings.lease_seconds * 0.75

    def _claim(self, job_id: str, run_time: datetime) -> bool:
        """Called by a worker just before a run starts: True if it may start."""
        if not self._lease_surely_held():
            log.warning("run of %s at %s not started: this process may no longer hold the executor lease",
                        job_id, run_time)
            return False
        at = run_time.timestamp()
        if (job_id, at) in self._manual_runs:
            row = run_row(job_id, at, "running")
            row["started_at"] = time.time()
            return self.store.claim_run(row)
        self.jobstore.wait_claimed(job_id, at)
        return True

    def _run_started(self, job_id: str, run_time: datetime) -> None:
        at = run_time.timestamp()
        self.history.run_started(job_id, at, has_row=(job_id, at) in self._manual_runs)

    # --- building APScheduler jobs from specs -------------------------------------------------------------------
    def make_trigger(self, spec: JobSpec) -> BaseTrigger:
        return build_trigger(spec, self.settings.timezone)

    def make_job(self, spec: JobSpec, trigger: BaseTrigger, next_run_time: datetime | None) -> SpecJob:
        # Built field by field: Job.__init__ inspects the callable's signature per job, a cost that adds up
        # to seconds when loading 100,000 rows, for values we have already validated.
        job = SpecJob.__new__(SpecJob)
        job._scheduler = self.scheduler
        job._jobstore_alias = "default"
        job.id = spec.id
        job.name = spec.display_name
        job.func = kinds.execute
        job.func_ref = "scheduler_core.kinds:execute"
        job.args = (spec,)
        job.kwargs = {}
        job.trigger = trigger
        job.executor = "default"
        job.misfire_grace_time = spec.misfire_grace_time or self.settings.misfire_grace_time
        job.coalesce = self.settings.coalesce if spec.coalesce is None else spec.coalesce
        job.max_instances = spec.max_instances
        job.next_run_time = next_run_time
        return job

    def _row_to_job(self, row: JobRow) -> SpecJob:
        spec = JobSpec.from_json(row.spec)
        kinds.prepare(spec)
        trigger = self.make_trigger(spec)
        nrt = None if row.paused else from_epoch(row.next_run_time)
        if not row.paused and nrt is None:
            # A job whose next run time was never written (or was cleared outside carnation): schedule afresh.
            nrt = trigger.get_next_fire_time(None, datetime.now(timezone.utc))
        if nrt is not None:
            nrt = nrt.astimezone(self.scheduler.timezone)
        return self.make_job(spec, trigger, nrt)

    def _load_jobs(self, rows: list[JobRow]) -> list[tuple[JobRow, SpecJob]]:
        loaded = []
        self.broken.clear()
        for row in rows:
            try:
                loaded.append((row, self._row_to_job(row)))
            except Exception as exc:
                self._mark_broken(row.id, exc, already=row.broken)
        return loaded

    def _load_broken_only(self, rows: list[JobRow]) -> None:
        self.broken = {row.id: row.broken for row in rows if row.broken}

    def _mark_broken(self, job_id: str, exc: Exception, already: str | None = None) -> None:
        reason = str(exc) or type(exc).__name__
        self.broken[job_id] = reason
        if already != reason:
            # Kept, never deleted: the operator fixes or removes it.
            log.error("job %s cannot be scheduled and is marked broken: %s", job_id, reason)
            self.store.mark_broken(job_id, reason)
            self._publish("broken", job_id, reason)

    # --- predefined jobs from config ------------------------------------------------------------------------
    def sync_config_jobs(self) -> None:
        """Upsert the config's jobs: config owns their definition, runtime state (paused) is kept. Jobs that
        came from config and are no longer in it are removed. Never raises ConflictingIdError on restart."""
        specs: list[JobSpec] = []
        errors: list[FieldError] = []
        for index, entry in enumerate(self.settings.jobs):
            try:
                spec = from_flat(entry)
                kinds.prepare(spec)
                specs.append(spec)
            except SpecError as exc:
                errors.extend(FieldError(f"jobs[{index}].{e.field}", e.reason) for e in exc.errors)
        if errors:
            raise SpecError(errors)
        # Only the rows this can touch: the table may hold 100,000 jobs.
        config_ids = [spec.id for spec in specs]
        cols = jobs_table.c
        existing = {row.id: row for row in self.store.load_jobs(
            sa.or_(cols.source == "config", cols.id.in_(config_ids)) if config_ids else cols.source == "config")}
        now = datetime.now(timezone.utc)
        for spec in specs:
            row = existing.get(spec.id)
            spec_json = spec.to_json()
            if row is None:
                nrt = None if spec.paused else self.make_trigger(spec).get_next_fire_time(None, now)
                self.store.insert_job(spec.id, spec_json, to_epoch(nrt), spec.paused, source="config")
            elif row.spec != spec_json or row.source != "config" or row.broken:
                paused = row.paused
                same_trigger = not row.broken and _same_schedule(row.spec, spec)
                nrt = row.next_run_time if same_trigger else (
                    None if paused else to_epoch(self.make_trigger(spec).get_next_fire_time(None, now)))
                self.store.update_job(spec.id, spec_json=spec_json, next_run_time=nrt, paused=paused, source="config")
        for row in existing.values():
            if row.source == "config" and row.id not in config_ids:
                log.info("job %s was removed from the config; removing it", row.id)
                self.store.delete_job(row.id)

    # --- edits (database first, then memory) -------------------------------------------------------------------
    def add(self, spec: JobSpec) -> None:
        with self._lock:
            kinds.prepare(spec)
            trigger = self.make_trigger(spec)
            nrt = self._first_run_time(spec, trigger)
            self.store.insert_job(spec.id, spec.to_json(), to_epoch(nrt), spec.paused)
            self._seen_seq += 1
            if self.executing:
                self._put_in_memory(self.make_job(spec, trigger, nrt), aps.EVENT_JOB_ADDED)

    def _first_run_time(self, spec: JobSpec, trigger: BaseTrigger) -> datetime | None:
        """When a new or edited job first fires; refuses a schedule that would never run."""
        if spec.paused:
            return None
        now = datetime.now(self.scheduler.timezone)
        nrt = trigger.get_next_fire_time(None, now)
        if nrt is None:
            raise SpecError(FieldError("end_date", "the schedule never fires: its last fire time has passed"))
        grace = spec.misfire_grace_time or self.settings.misfire_grace_time
        if spec.trigger.type == "date" and (now - nrt).total_seconds() > grace:
            raise SpecError(FieldError("run_date", f"{nrt.isoformat()} is in the past: the job would never run"))
        return nrt

    def update(self, spec: JobSpec) -> None:
        """Replace a job's definition. Its schedule restarts from now; paused stays paused."""
        with self._lock:
            kinds.prepare(spec)
            trigger = self.make_trigger(spec)
            nrt = self._first_run_time(spec, trigger)
            self._record_runs_going_on(spec.id)
            # Its source stays: a config job edited by hand is still the config's (the next start upserts it).
            # No read first: the UPDATE itself says JobNotFound.
            self.store.update_job(spec.id, spec_json=spec.to_json(), next_run_time=to_epoch(nrt), paused=spec.paused)
            self.broken.pop(spec.id, None)
            if self.executing:
                self._put_in_memory(self.make_job(spec, trigger, nrt), aps.EVENT_JOB_MODIFIED)

    def _record_runs_going_on(self, job_id: str) -> None:
        """Before an edit moves or drops a job's claim: its runs going on get their "running" rows now. A process
        taking over after a crash finds claimed runs by walking the job's stored schedule; a run of the old
        schedule is found only by its row."""
        if self.executing and not self.history.record_running_now(job_id):
            log.warning("runs of %s going on are not recorded yet; editing it anyway", job_id)

    def set_paused(self, job_id: str, paused: bool) -> None:
        with self._lock:
            row = self.store.get_job_row(job_id)
            if row.broken:
                raise SpecError(FieldError("id", f"job {job_id} is broken: {row.broken}"))
            spec = JobSpec.from_json(row.spec)
            spec = spec.model_copy(update={"paused": paused})
            nrt = None
            if not paused:
                nrt = self.make_trigger(spec).get_next_fire_time(None, datetime.now(self.scheduler.timezone))
            self.store.update_job(job_id, spec_json=spec.to_json(), next_run_time=to_epoch(nrt), paused=paused)
            if self.executing:
                job = self.jobstore.lookup_job(job_id)
                if job is not None:
                    if nrt is None and not paused:
                        self.remove_from_memory(job_id)
                        return
                    self._put_in_memory(self.make_job(spec, job.trigger, nrt), aps.EVENT_JOB_MODIFIED)
            self._publish("paused" if paused else "resumed", job_id)

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._record_runs_going_on(job_id)
            if not self.store.delete_job(job_id):
                raise JobNotFound(job_id)
            self.broken.pop(job_id, None)
            self.remove_from_memory(job_id)

    def run_now(self, job_id: str) -> None:
        """Start one run right away, outside the schedule (which is left as it is)."""
        if not self.executing:
            raise NotLeader(f"this process ({self.host}) does not execute jobs; run it where the scheduler runs")
        with self.scheduler._jobstores_lock:
            job = self.jobstore.lookup_job(job_id)
        if job is None:
            if job_id in self.broken:
                raise SpecError(FieldError("id", f"job {job_id} is broken: {self.broken[job_id]}"))
            raise JobNotFound(job_id)
        now = datetime.now(self.scheduler.timezone)
        self._manual_runs.add((job_id, now.timestamp()))
        try:
            self.executor.submit_job(job, [now])
        except MaxInstancesReachedError:
            self._manual_runs.discard((job_id, now.timestamp()))
            self._on_aps_event(JobSubmissionEvent(aps.EVENT_JOB_MAX_INSTANCES, job_id, "default", [now]))
            raise
        self._on_aps_event(JobSubmissionEvent(aps.EVENT_JOB_SUBMITTED, job_id, "default", [now]))

    def _put_in_memory(self, job: SpecJob, event_code: int) -> None:
        with self.scheduler._jobstores_lock:
            if self.jobstore.lookup_job(job.id) is None:
                self.jobstore.add_job(job)
            else:
                self.jobstore.update_job(job)
        self.scheduler._dispatch_event(aps.JobEvent(event_code, job.id, "default"))
        self.scheduler.wakeup()

    def remove_from_memory(self, job_id: str) -> None:
        if not self.executing:
            return
        with self.scheduler._jobstores_lock:
            present = self.jobstore.lookup_job(job_id) is not None
            if present:
                self.jobstore.forget(job_id)
        if present:
            self.scheduler._dispatch_event(aps.JobEvent(aps.EVENT_JOB_REMOVED, job_id, "default"))

    # --- reading ---------------------------------------------------------------------------------------------
    def running_counts(self) -> dict[str, int]:
        """Runs going on, by job id. It takes the executor's lock, which the scheduler loop takes to submit: read it
        once per listing, not once per job."""
        return self.executor.running_instances()

    def running_count(self) -> int:
        """Runs going on, all jobs together."""
        return sum(self.running_counts().values())

    def flush(self, timeout: float = 10.0) -> bool:
        """Make everything so far durable: next run times and history."""
        ok = self.jobstore.flush(timeout)
        return self.history.flush(timeout) and ok

    # --- changes made by other processes ----------------------------------------------------------------------
    def _poll_loop(self) -> None:
        try:
            while not self._stop.wait(self.settings.poll_interval):
                try:
                    if self.executing:
                        self._keep_lease()
                    elif self.wants_to_execute:
                        self._try_take_over()
                    # One cheap statement per look; the costlier reads and writes only when it shows something new.
                    seq, requests_pending = self.store.poll()
                    self.apply_external_changes(seq)
                    if self.executing:
                        if requests_pending:
                            self._run_requested()
                        self._prune_history_when_due()
                    if self.db_error:
                        self._publish("database", message="database reachable again")
                        self.db_error = None
                except Exception as exc:
                    self._database_problem(f"database unavailable: {exc}")
        finally:
            self.store.end_poll()

    def apply_external_changes(self, seq: int | None = None) -> bool:
        """Bring memory in line with rows changed by any process since the last look (at `seq`, the jobs_seq just
        read, if given). True if anything changed."""
        if seq is None:
            seq = self.store.jobs_seq()
        if seq == self._seen_seq:
            return False
        with self._lock:
            rows = {row.id: row for row in self.store.load_jobs()}
            self._seen_seq = seq
            self.broken = {job_id: row.broken for job_id, row in rows.items() if row.broken}
            if not self.executing:
                return True
            with self.scheduler._jobstores_lock:
                in_memory = {job.id: job for job in self.jobstore.get_all_jobs()}
            for job_id in in_memory.keys() - rows.keys():
                self.remove_from_memory(job_id)
            for job_id, row in rows.items():
                job = in_memory.get(job_id)
                if row.broken or self.jobstore.finishing(job_id):
                    continue  # a finished one-off's row stays until its last outcome is durable: never rerun it
                if job is not None and job.args[0].to_json() == row.spec and (job.next_run_time is None) == row.paused:
                    continue
                try:
                    new_job = self._row_to_job(row)
                except Exception as exc:
                    self.remove_from_memory(job_id)
                    self._mark_broken(job_id, exc)
                    continue
                self._put_in_memory(new_job, aps.EVENT_JOB_ADDED if job is None else aps.EVENT_JOB_MODIFIED)
        return True

    PRUNE_EVERY = 600.0

    def _prune_history_when_due(self) -> None:
        """Apply history retention (only the executor does, so processes don't race over the same rows). On its
        own thread: a large prune takes seconds, and the poller must keep renewing the lease meanwhile."""
        if time.monotonic() < self._next_prune or (self._pruner is not None and self._pruner.is_alive()):
            return
        self._next_prune = time.monotonic() + self.PRUNE_EVERY
        self._pruner = threading.Thread(target=self._prune_history, name="carnation-retention", daemon=True)
        self._pruner.start()

    def _prune_history(self) -> None:
        max_age = self.settings.history_max_age_days
        try:
            deleted = self.store.prune_runs(self.settings.history_keep_per_job,
                                            max_age * 86400 if max_age is not None else None)
        except Exception as exc:
            log.warning("history retention failed (retried in %d s): %s", self.PRUNE_EVERY, exc)
            return
        if deleted:
            log.info("history retention removed %d old run(s)", deleted)

    def _run_requested(self) -> None:
        for job_id in self.store.take_run_requests():
            try:
                self.run_now(job_id)
            except Exception as exc:
                log.warning("requested run of %s not started: %s", job_id, exc)
                self._publish("error", job_id, f"run now refused: {exc}")

    # --- events ----------------------------------------------------------------------------------------------
    def _publish(self, kind: str, job_id: str | None = None, message: str = "",
                 scheduled_at: datetime | None = None) -> None:
        if not self.events.has_subscribers:
            return  # headless: no event object (and clock read) per run that nobody would read
        self.events.publish(SchedulerEvent(kind=kind, job_id=job_id, message=message, scheduled_at=scheduled_at))

    def _database_problem(self, message: str) -> None:
        if self.db_error is None:
            log.error("%s", message)
            self._publish("database", message=message)
        self.db_error = message

    def _remember_runs(self, rows: list[dict[str, Any]]) -> None:
        """The history writer's word that `rows` are durable."""
        for row in rows:
            self.last_runs[row["job_id"]] = row
        self.jobstore.runs_recorded(rows)

    def _on_aps_event(self, event: aps.SchedulerEvent) -> None:
        """APScheduler's listener: runs on its threads, so it only converts and enqueues."""
        code = event.code
        job_id = getattr(event, "job_id", None)
        if code & JOB_EVENTS_WITH_ROWS:
            row = row_from_event(event)
            if row is not None:
                key = (row["job_id"], row["scheduled_at"])
                self._manual_runs.discard(key)
                row["_claimed"] = self.history.run_finished(*key)
                self.history.record(row)
                self.last_runs[row["job_id"]] = row
                if not self.events.has_subscribers:
                    return
                message = row["exception"] or ""
                if row["duration"] is not None:
                    message = f"{row['duration']:.3f} s" + (f" — {message}" if message else "")
                self._publish(EVENT_NAMES[code], job_id, message, getattr(event, "scheduled_run_time", None))
            return
        if code == aps.EVENT_JOB_MAX_INSTANCES:
            for run_time in event.scheduled_run_times:
                self.history.record(run_row(job_id, run_time, "skipped",
                                            exception="skipped: maximum number of running instances reached"))
            self._publish("skipped", job_id, "maximum number of running instances reached",
                          event.scheduled_run_times[-1])
            return
        if code == aps.EVENT_JOB_SUBMITTED:
            self._publish("submitted", job_id, scheduled_at=event.scheduled_run_times[-1])
            return
        name = EVENT_NAMES.get(code)
        if name and code != aps.EVENT_SCHEDULER_STARTED:
            self._publish(name, job_id)


def _to_microseconds(epoch: float | None) -> float | None:
    return to_epoch(from_epoch(epoch))


def _same_schedule(old_spec_json: str, new: JobSpec) -> bool:
    try:
        old = JobSpec.from_json(old_spec_json)
    except Exception:
        return False
    keys = ("trigger", "timezone", "start_date", "end_date", "jitter")
    return all(getattr(old, k) == getattr(new, k) for k in keys)

