"""The one facade the TUI, the scripting CLI and the HTTP API all use. No SQL or trigger logic lives above it.

Inputs are validated here (SpecError names the field); outputs are plain frozen views, safe to hand to any thread.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from . import cron
from .describe import describe_trigger
from .engine import Engine
from .errors import SpecError
from .events import Subscription
from .spec import JobSpec, build_trigger, coerce_spec, merge_changes, parse_spec
from .store import JobRow, from_epoch, redact_url

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

JobState = Literal["scheduled", "paused", "running", "broken"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunView:
    id: int | None
    job_id: str
    outcome: str  # success, error, timeout, missed, skipped
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    host: str
    pid: int
    return_value: str | None = None
    exception: str | None = None
    traceback: str | None = None
    output: str | None = None
    exit_code: int | None = None
    http_status: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunView:
        return cls(
            id=row.get("id"),
            job_id=row["job_id"],
            outcome=row["outcome"],
            scheduled_at=from_epoch(row["scheduled_at"]),  # type: ignore[arg-type]
            started_at=from_epoch(row["started_at"]),
            finished_at=from_epoch(row["finished_at"]),
            duration=row["duration"],
            host=row["host"],
            pid=row["pid"],
            return_value=row["return_value"],
            exception=row["exception"],
            traceback=row["traceback"],
            output=row["output"],
            exit_code=row["exit_code"],
            http_status=row["http_status"],
        )


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    name: str
    kind: str
    spec: JobSpec | None  # None only for a broken row whose JSON no longer parses
    trigger_text: str
    next_run_time: datetime | None
    state: JobState
    broken: str | None
    running: int
    last_run: RunView | None
    source: str

    @property
    def paused(self) -> bool:
        return self.state == "paused"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_prev(self) -> bool:
        return self.page > 1


@dataclass(frozen=True, slots=True)
class Status:
    host: str
    pid: int
    database: str
    executing: bool
    allowed_hosts: list[str]
    may_execute: bool
    jobs: int
    paused: int
    broken: int
    running_now: int
    errors_last_hour: int
    database_error: str | None
    timezone: str
    executor: str | None  # "host pid N" of the process that executes jobs, if any


class Console:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._views: dict[str, tuple[tuple[Any, ...], JobView]] = {}
        self._specs: dict[str, tuple[int, str, JobSpec | None]] = {}  # id -> (seq, json, parsed): parse once
        # id -> (spec, its trigger): a standby console finds a claimed-ahead job's next fire on every refresh, and
        # building the trigger was most of that (8 µs a job: 80 ms a refresh at 10,000 such jobs).
        self._triggers: dict[str, tuple[JobSpec, BaseTrigger]] = {}
        self._cached_when_frozen = 0  # entries in the caches at the last gc.freeze()

    @property
    def timezone(self) -> str:
        return self.engine.settings.timezone

    # --- jobs ----------------------------------------------------------------------------------------------
    def list_jobs(self) -> list[JobView]:
        """Every job, broken ones included, ordered by id."""
        engine = self.engine
        running = engine.running_counts()
        if engine.executing:
            with engine.scheduler._jobstores_lock:
                jobs = list(engine.jobstore._jobs_index.values())
            views = [self._view_of_job(job, running) for job, _ in jobs]
            seen = {v.id for v in views}
            rows = [r for r in engine.store.load_jobs() if r.id not in seen] if engine.broken else []
            views.extend(self._view_of_row(r, running, firing=True) for r in rows)
        else:
            firing = self._someone_executes()
            views = [self._view_of_row(r, running, firing) for r in engine.store.load_jobs()]
        views.sort(key=lambda v: v.id)
        self._forget_removed({v.id for v in views})
        self._freeze_caches()
        return views

    def _freeze_caches(self) -> None:
        """What this console caches per job (views, parsed specs) lives as long as it does, as the engine's loaded
        jobs do: out of the cyclic collector's sight too (engine.py freezes those), or each full collection walks
        it, 95-150 ms at 100,000 jobs with a console's keys and the scheduler loop waiting. Again each time the
        cache has doubled, so a console opened on an empty database gets there too; a freeze keeps any cyclic
        garbage alive at that moment forever, so a handful of times in a console's life, not per refresh."""
        cached = len(self._views) + len(self._specs)  # the executor's views, or a standby console's parsed rows
        if cached > 2 * self._cached_when_frozen:
            gc.freeze()
            self._cached_when_frozen = cached

    def _forget_removed(self, live_ids: set[str]) -> None:
        """Drop what is cached for jobs gone from the database (ids come and go in a long-running console)."""
        for cache in (self._views, self._specs, self._triggers):
            for job_id in cache.keys() - live_ids:
                del cache[job_id]

    def get_job(self, job_id: str) -> JobView:
        engine = self.engine
        running = engine.running_counts()
        if engine.executing:
            job = engine.jobstore.lookup_job(job_id)
            if job is not None:
                return self._view_of_job(job, running)
        return self._view_of_row(engine.store.get_job_row(job_id), running,
                                 firing=engine.executing or self._someone_executes())

    def get_spec(self, job_id: str) -> JobSpec:
        view = self.get_job(job_id)
        if view.spec is None:
            raise SpecError(f"job {job_id} is broken: {view.broken}", field="id")
        return view.spec

    def add_job(self, data: JobSpec | dict[str, Any]) -> JobView:
        spec = coerce_spec(data)
        self.engine.add(spec)
        return self.get_job(spec.id)

    def update_job(self, job_id: str, changes: dict[str, Any] | JobSpec) -> JobView:
        """Apply `changes` (a whole JobSpec, or a dict of fields in our or Flask-APScheduler's shape)."""
        if isinstance(changes, JobSpec):
            spec = changes
        else:
            spec = merge_changes(self.get_spec(job_id), changes)
        if spec.id != job_id:
            raise SpecError("the id of a job cannot be changed", field="id")
        self.engine.update(spec)
        return self.get_job(job_id)

    def pause_job(self, job_id: str) -> JobView:
        self.engine.set_paused(job_id, True)
        return self.get_job(job_id)

    def resume_job(self, job_id: str) -> JobView:
        self.engine.set_paused(job_id, False)
        return self.get_job(job_id)

    def run_job(self, job_id: str) -> None:
        """Run once now. Here if this process executes; otherwise the executing process does, within a poll."""
        if self.engine.executing:
            self.engine.run_now(job_id)
        else:
            self.engine.store.request_run(job_id, f"{self.engine.host}:{self.engine.pid}")

    def import_jobs(self, items: list[Any]) -> int:
        """Add or replace jobs. Every item is validated first: one bad item changes nothing."""
        specs = []
        for index, item in enumerate(items):
            try:
                specs.append(coerce_spec(item))
            except SpecError as exc:
                raise SpecError([type(e)(f"[{index}].{e.field}", e.reason) for e in exc.errors]) from None
        existing = {v.id for v in self.list_jobs()}
        for spec in specs:
            if spec.id in existing:
                self.engine.update(spec)
            else:
                self.engine.add(spec)
        return len(specs)

    def remove_job(self, job_id: str) -> None:
        self.engine.remove(job_id)

    # --- history ---------------------------------------------------------------------------------------------
    def history(
        self, job_id: str | None = None, page: int = 1, per_page: int = 50, outcome: str | None = None
    ) -> Page[RunView]:
        if page < 1:
            raise SpecError("must be 1 or more", field="page")
        if not 1 <= per_page <= 1000:
            raise SpecError("must be between 1 and 1000", field="per_page")
        rows, total = self.engine.store.runs_page(job_id, page, per_page, outcome)
        return Page([RunView.from_row(r) for r in rows], page, per_page, total)

    def get_run(self, run_id: int) -> RunView:
        row = self.engine.store.get_run(run_id)
        if row is None:
            raise LookupError(f"run {run_id} not found")
        return RunView.from_row(row)

    # --- previews for forms -----------------------------------------------------------------------------------
    def preview(self, data: JobSpec | dict[str, Any], count: int = 5) -> list[datetime]:
        """The next `count` fire times of a (not yet stored) spec, in its timezone. Raises SpecError."""
        spec = data if isinstance(data, JobSpec) else parse_spec(data)
        trigger = build_trigger(spec, self.timezone)
        return cron.next_fire_times(trigger, count)

    # --- scheduler -----------------------------------------------------------------------------------------------
    def status(self) -> Status:
        engine = self.engine
        hour_ago = time.time() - 3600
        try:
            states = self._job_states()
        except Exception:  # the database is down: say so (database_error) rather than fail
            states = []
        try:
            errors = engine.store.count_runs(since=hour_ago, outcome=("error", "timeout", "missed", "abandoned"))
            holder = engine.store.lease_holder()
        except Exception:
            errors, holder = -1, None
        return Status(
            host=engine.host,
            pid=engine.pid,
            database=redact_url(engine.store.url),
            executing=engine.executing,
            allowed_hosts=list(engine.settings.allowed_hosts),
            may_execute=engine.may_execute,
            jobs=len(states),
            paused=sum(state == "paused" for state in states),
            broken=sum(state == "broken" for state in states),
            running_now=engine.running_count(),
            errors_last_hour=errors,
            database_error=engine.db_error,
            timezone=self.timezone,
            executor=f"{holder['host']} pid {holder['pid']}" if holder else None,
        )

    def _job_states(self) -> list[str]:
        """Each job's paused/broken/scheduled state, without building views (cheap at 100,000 jobs)."""
        engine = self.engine
        if engine.executing:
            with engine.scheduler._jobstores_lock:
                states = ["paused" if job.next_run_time is None else "scheduled"
                          for job, _ in engine.jobstore._jobs_index.values()]
            return states + ["broken"] * len(engine.broken)
        return ["broken" if row.broken else "paused" if row.paused else "scheduled" for row in engine.store.load_jobs()]

    def subscribe(self, maxlen: int = 10_000) -> Subscription:
        return self.engine.events.subscribe(maxlen)

    def flush(self, timeout: float = 10.0) -> bool:
        return self.engine.flush(timeout)

    # --- views ---------------------------------------------------------------------------------------------
    def _last_run(self, job_id: str) -> RunView | None:
        row = self.engine.last_runs.get(job_id)
        return RunView.from_row(row) if row else None

    def _view_of_job(self, job: Any, running_counts: dict[str, int]) -> JobView:
        spec: JobSpec = job.args[0]
        running = running_counts.get(job.id, 0)
        last = self.engine.last_runs.get(job.id)
        key = (spec, job.next_run_time, running, id(last))
        cached = self._views.get(job.id)
        if cached and cached[0] == key:
            return cached[1]
        state: JobState = "running" if running else ("paused" if job.next_run_time is None else "scheduled")
        view = JobView(
            id=job.id, name=spec.display_name, kind=spec.kind, spec=spec,
            trigger_text=describe_trigger(spec.trigger, spec.timezone or self.timezone),
            next_run_time=job.next_run_time, state=state, broken=None, running=running,
            last_run=RunView.from_row(last) if last else None, source="",
        )
        self._views[job.id] = (key, view)
        return view

    def _spec_of_row(self, row: JobRow) -> JobSpec | None:
        cached = self._specs.get(row.id)
        if cached and cached[0] == row.seq and cached[1] == row.spec:
            return cached[2]
        try:
            spec: JobSpec | None = JobSpec.from_json(row.spec)
        except Exception:
            spec = None
        self._specs[row.id] = (row.seq, row.spec, spec)
        return spec

    def _someone_executes(self) -> bool:
        try:
            return self.engine.store.someone_executes(self.engine.settings.lease_seconds)
        except Exception:  # the database is down: claims say nothing then
            return False

    def _view_of_row(self, row: JobRow, running_counts: dict[str, int], firing: bool) -> JobView:
        spec = self._spec_of_row(row)
        broken = row.broken or self.engine.broken.get(row.id)
        state: JobState = "broken" if broken else ("paused" if row.paused else "scheduled")
        return JobView(
            id=row.id, name=spec.display_name if spec else row.id, kind=spec.kind if spec else "?", spec=spec,
            trigger_text=describe_trigger(spec.trigger, spec.timezone or self.timezone) if spec else "",
            next_run_time=self._next_run_of_row(row, spec, firing) if not broken else None, state=state, broken=broken,
            running=running_counts.get(row.id, 0),
            last_run=self._last_run(row.id), source=row.source,
        )

    def _next_run_of_row(self, row: JobRow, spec: JobSpec | None, firing: bool) -> datetime | None:
        """The stored next run time, or, where it has passed but a live executor's claim still covers it (a frequent
        job claimed ahead writes its row once per claim, jobstore.py), the trigger's next fire from now. A passed
        time is shown as it is otherwise: nothing is firing that job (no claim, or no executor since it stopped)."""
        now = time.time()
        if (not firing or spec is None or row.paused or row.next_run_time is None or row.next_run_time >= now
                or row.claimed_until is None or row.claimed_until < now):
            return from_epoch(row.next_run_time)
        cached = self._triggers.get(row.id)
        if cached is None or cached[0] is not spec:  # _spec_of_row gives the same object until the row changes
            cached = self._triggers[row.id] = (spec, build_trigger(spec, self.timezone))
        upcoming = cached[1].get_next_fire_time(None, from_epoch(now))
        return from_epoch(row.next_run_time) if upcoming is None else from_epoch(upcoming.timestamp())
