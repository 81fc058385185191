"""The engine: APScheduler 3.11's BackgroundScheduler over carnation's store, history and event fan-out.

One Engine per process. It always reads and writes the database; it executes jobs only while it holds the
executor role (allowed host, and the lease once several processes share a database). Every change goes to the
database first, then to the in-memory scheduler, so a refused change leaves both untouched.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatch
from typing import Any

from apscheduler import events as aps
from apscheduler.events import JobSubmissionEvent
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from . import kinds
from .config import Settings
from .errors import ConflictingId, FieldError, JobNotFound, NotLeader, SpecError
from .events import EVENT_NAMES, EventBus, SchedulerEvent
from .executor import ClaimingExecutor
from .history import HOSTNAME, HistoryRecorder, row_from_event, run_row
from .jobstore import SpecJob, SpecJobStore
from .spec import JobSpec, build_trigger, from_flat
from .store import JobRow, Store, from_epoch, to_epoch

log = logging.getLogger(__name__)

JOB_EVENTS_WITH_ROWS = aps.EVENT_JOB_EXECUTED | aps.EVENT_JOB_ERROR | aps.EVENT_JOB_MISSED


def host_allowed(allowed_hosts: list[str], host: str = HOSTNAME) -> bool:
    """Flask-APScheduler's allowed_hosts: '*' or host names (shell-style patterns allowed)."""
    return any(pattern == "*" or fnmatch(host, pattern) for pattern in allowed_hosts)


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
        self.started = False
        self.broken: dict[str, str] = {}  # job id -> why its row cannot be scheduled
        self.last_runs: dict[str, dict[str, Any]] = {}
        self.db_error: str | None = None
        self._seen_seq = 0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._lock = threading.RLock()  # serialises this process's edits against the change poller
        self.history = HistoryRecorder(self.store, on_rows=self._remember_runs, on_problem=self._database_problem)
        self.jobstore = SpecJobStore(self.store)
        self.executor = ClaimingExecutor(settings.workers, self._claim)
        self.scheduler = BackgroundScheduler(
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
        self._load_broken_only()
        self.wants_to_execute = execute and self.may_execute
        if self.wants_to_execute:
            self._try_take_over()
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
            if was_executing:
                self._release_lease()
        self.history.stop()
        self.started = False
        return finished

    # --- the executor role: one process per database ----------------------------------------------------------
    def _try_take_over(self) -> bool:
        if not self.store.try_acquire_lease(self.holder, self.host, self.pid, self.settings.lease_seconds):
            return False
        self._last_renewal = time.monotonic()
        with self._lock:
            abandoned = self.store.abandon_running(self.host, self.pid)
            if abandoned:
                log.warning("%d run(s) of a stopped process never finished; recorded as abandoned", abandoned)
            self.last_runs = self.store.last_runs()
            handled = self.store.last_handled()
            self._seen_seq = self.store.jobs_seq()
            jobs = [self._skip_handled(job, handled.get(job.id)) for job in self._load_jobs()]
            self.jobstore.load([job for job in jobs if job is not None])
            self.executing = True
            if self._scheduler_started:
                self.scheduler.resume()
            else:
                self.scheduler.start()
                self._scheduler_started = True
        log.info("%s pid %d executes jobs", self.host, self.pid)
        self._publish("leader", message=f"{self.host} pid {self.pid} executes jobs")
        return True

    def _skip_handled(self, job: SpecJob, handled_at: float | None) -> SpecJob | None:
        """A job whose stored next run time lags its history (its last executor died before writing the new time)
        continues after the last run it has a row for, so no scheduled run starts twice."""
        if handled_at is None or job.next_run_time is None or to_epoch(job.next_run_time) > handled_at:
            return job
        last = from_epoch(handled_at)
        nrt = job.trigger.get_next_fire_time(last, last + timedelta(microseconds=1))
        if nrt is None:
            self.store.delete_job(job.id)  # a one-off that already ran
            return None
        job.next_run_time = nrt.astimezone(self.scheduler.timezone)
        return job

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
        try:
            held = self.store.renew_lease(self.holder)
        except Exception as exc:
            # Unreachable: keep executing from memory while the lease is surely ours, then step down so that a
            # standby which can reach the database may take over without two executors.
            if time.monotonic() - self._last_renewal > self.settings.lease_seconds * 0.75:
                self._step_down(f"database unreachable for too long ({exc})")
            raise
        if held:
            self._last_renewal = time.monotonic()
        else:
            self._step_down("another process took the lease")

    def _release_lease(self) -> None:
        try:
            self.store.release_lease(self.holder)
        except Exception as exc:
            log.warning("could not release the lease (a standby takes over when it expires): %s", exc)

    def _claim(self, job_id: str, run_time: datetime) -> bool:
        row = run_row(job_id, run_time, "running")
        row["started_at"] = time.time()
        return self.store.claim_run(row)

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

    def _load_jobs(self) -> list[SpecJob]:
        jobs = []
        self.broken.clear()
        for row in self.store.load_jobs():
            try:
                jobs.append(self._row_to_job(row))
            except Exception as exc:
                self._mark_broken(row.id, exc, already=row.broken)
        return jobs

    def _load_broken_only(self) -> None:
        self.broken = {row.id: row.broken for row in self.store.load_jobs() if row.broken}

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
        existing = {row.id: row for row in self.store.load_jobs()}
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
        config_ids = {spec.id for spec in specs}
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
            row = self.store.get_job_row(spec.id)
            kinds.prepare(spec)
            trigger = self.make_trigger(spec)
            paused = spec.paused
            nrt = self._first_run_time(spec, trigger)
            self.store.update_job(spec.id, spec_json=spec.to_json(), next_run_time=to_epoch(nrt), paused=paused,
                                  source="user" if row.source != "config" else "config")
            self.broken.pop(spec.id, None)
            if self.executing:
                self._put_in_memory(self.make_job(spec, trigger, nrt), aps.EVENT_JOB_MODIFIED)

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
        try:
            self.executor.submit_job(job, [now])
        except MaxInstancesReachedError:
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
    def running_count(self, job_id: str | None = None) -> int:
        instances = getattr(self.executor, "_instances", {})
        if job_id is not None:
            return instances.get(job_id, 0)
        return sum(instances.values())

    def flush(self, timeout: float = 10.0) -> bool:
        """Make everything so far durable: next run times and history."""
        ok = self.jobstore.flush(timeout)
        return self.history.flush(timeout) and ok

    # --- changes made by other processes ----------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_interval):
            try:
                if self.executing:
                    self._keep_lease()
                elif self.wants_to_execute:
                    self._try_take_over()
                self.apply_external_changes()
                if self.executing:
                    self._run_requested()
                    self._prune_history_when_due()
                if self.db_error:
                    self._publish("database", message="database reachable again")
                    self.db_error = None
            except Exception as exc:
                self._database_problem(f"database unavailable: {exc}")

    def apply_external_changes(self) -> bool:
        """Bring memory in line with rows changed by any process since the last look. True if anything changed."""
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
                if row.broken:
                    continue
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
        """Apply history retention (only the executor does, so processes don't race over the same rows)."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.PRUNE_EVERY
        max_age = self.settings.history_max_age_days
        deleted = self.store.prune_runs(self.settings.history_keep_per_job,
                                        max_age * 86400 if max_age is not None else None)
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
        self.events.publish(SchedulerEvent(kind=kind, job_id=job_id, message=message, scheduled_at=scheduled_at))

    def _database_problem(self, message: str) -> None:
        if self.db_error is None:
            log.error("%s", message)
            self._publish("database", message=message)
        self.db_error = message

    def _remember_runs(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.last_runs[row["job_id"]] = row

    def _on_aps_event(self, event: aps.SchedulerEvent) -> None:
        """APScheduler's listener: runs on its threads, so it only converts and enqueues."""
        code = event.code
        job_id = getattr(event, "job_id", None)
        if code & JOB_EVENTS_WITH_ROWS:
            row = row_from_event(event)
            if row is not None:
                self.history.record(row)
                self.last_runs[row["job_id"]] = row
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


def _same_schedule(old_spec_json: str, new: JobSpec) -> bool:
    try:
        old = JobSpec.from_json(old_spec_json)
    except Exception:
        return False
    keys = ("trigger", "timezone", "start_date", "end_date", "jitter")
    return all(getattr(old, k) == getattr(new, k) for k in keys)

