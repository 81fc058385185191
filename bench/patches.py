"""Prototypes of engine fixes, applied by monkeypatching inside a benchmark child (`--patch NAME[,NAME]`).

The benchmarks never edit scheduler_core. These patches exist only to measure the "after" of a fix recommended in
bench/README.md ("Recommended engine fixes", F1-F9) before the lead applies it for real; they are measuring aids,
not the code to merge (no migrations, no takeover logic, no edit handling). Without --patch the benchmarks
measure the engine exactly as committed.

  noclaim      no claim before a run; finished runs are plain INSERTs. NOT safe on its own: it stands in for fix B
               (claim in the job row, written with the next run time by the write-behind UPDATE), whose per-run
               cost is one more column in a statement the engine already sends.
  group-claim  ClaimingExecutor's claims go through one committer thread: every claim queued while a transaction
               is in flight is inserted by the next one (group commit). Same guarantee (no run starts before its
               claim row is committed), one transaction per batch instead of per run.
  preclaim     fix A, claim ahead: the write-behind writer inserts the claim row (outcome "scheduled") of each
               job's NEXT run time right after writing that next run time (and, at start-up, of every loaded job),
               so at fire time the claim is normally committed and the worker starts at once; a run whose claim is
               not committed yet falls back to group-claim.
  upsert-finish  history: finish claimed runs with one multi-row INSERT .. ON CONFLICT/ON DUPLICATE KEY UPDATE
               instead of an executemany UPDATE (which pymysql sends as one round trip per row).
  case-nrt     write-behind: one UPDATE .. SET next_run_time = CASE id .. END WHERE id IN (..) per 500 jobs instead
               of an executemany UPDATE. Cheaper per row on MariaDB, but its SQL shape changes with each batch
               size (a fresh SQLAlchemy compile each time): measured WORSE p99; shown as what not to ship unpadded.
  switch-1ms   Engine.start(): sys.setswitchinterval(0.001) (GIL hand-over within 1 ms instead of 5 ms).
  lean-poll    the poller reads jobs_seq and "any run request?" with one precompiled SELECT on one persistent
               AUTOCOMMIT DBAPI connection (no checkout, pre-ping, BEGIN, ROLLBACK per poll); take_run_requests
               only when one exists.
  quiet-events Engine._publish returns at once while the event bus has no subscriber.
  writer-conn  the history and write-behind writers keep one connection each (no checkout, pre-ping, reset per
               batch); a failed batch drops it and the next reconnects.
  fast-load    start-up: one read of the jobs table instead of three (cached for the duration of start()), the
               memory store's sorted list built in one sort, JobSpec.from_json via model_validate_json (the engine
               does this itself since 63ae5de).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

APPLIED: list[str] = []


def apply(names: Iterable[str]) -> None:
    for name in names:
        if not name:
            continue
        globals()["_patch_" + name.replace("-", "_")]()
        APPLIED.append(name)


# --- claims ---------------------------------------------------------------------------------------------------
def _patch_noclaim() -> None:
    from scheduler_core import engine as engine_mod

    original = engine_mod.row_from_event

    def row_from_event(event: Any) -> dict[str, Any] | None:
        row = original(event)
        if row is not None:
            row["_claimed"] = False
        return row

    engine_mod.row_from_event = row_from_event
    engine_mod.Engine._claim = lambda self, job_id, run_time: True


class ClaimCommitter:
    """Group commit of claim rows: callers block until the transaction holding their row has committed."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._items: list[tuple[dict[str, Any], list[Any]]] = []
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carnation-claims", daemon=True)
        self._thread.start()
        self.transactions = 0

    def claim(self, row: dict[str, Any]) -> bool:
        done = threading.Event()
        slot: list[Any] = [done, None]
        with self._lock:
            self._items.append((row, slot))
        self._wake.set()
        done.wait()
        if isinstance(slot[1], BaseException):
            raise slot[1]
        return bool(slot[1])

    def _run(self) -> None:
        from sqlalchemy.exc import IntegrityError

        from scheduler_core.store import runs_table

        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._items = self._items, []
            if not batch:
                continue
            try:
                with self.store.engine.begin() as conn:
                    conn.execute(runs_table.insert(), [row for row, _ in batch])
                results: list[Any] = [True] * len(batch)
            except IntegrityError:
                results = []
                for row, _ in batch:  # someone claimed one of these before: find which, one by one
                    try:
                        results.append(self.store.claim_run(row))
                    except Exception as exc:
                        results.append(exc)
            except Exception as exc:
                results = [exc] * len(batch)
            self.transactions += 1
            for (_, slot), value in zip(batch, results):
                slot[1] = value
                slot[0].set()


def _claim_row(job_id: str, run_time: datetime) -> dict[str, Any]:
    from scheduler_core.history import run_row

    row = run_row(job_id, run_time, "running")
    row["started_at"] = time.time()
    return row


def _patch_group_claim() -> None:
    from scheduler_core import engine as engine_mod

    original_init = engine_mod.Engine.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._claims = ClaimCommitter(self.store)

    def _claim(self: Any, job_id: str, run_time: datetime) -> bool:
        return self._claims.claim(_claim_row(job_id, run_time))

    engine_mod.Engine.__init__ = __init__
    engine_mod.Engine._claim = _claim


def _patch_preclaim() -> None:
    """Claims written ahead, with the next run times (see the module docstring)."""
    from sqlalchemy.exc import IntegrityError

    from scheduler_core import engine as engine_mod
    from scheduler_core import jobstore as jobstore_mod
    from scheduler_core.store import runs_table

    _patch_group_claim()
    original_init = engine_mod.Engine.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.jobstore._preclaimed = set()  # (job id, scheduled epoch) whose claim row is committed
        self.jobstore._preclaim_lock = threading.Lock()

    def _claim(self: Any, job_id: str, run_time: datetime) -> bool:
        key = (job_id, run_time.timestamp())
        js = self.jobstore
        with js._preclaim_lock:
            if key in js._preclaimed:
                js._preclaimed.discard(key)
                return True
        return self._claims.claim(_claim_row(job_id, run_time))

    def _write_pending(self: Any) -> None:
        # Same as SpecJobStore._write_pending, plus: the claim rows of the next runs, in the same transaction.
        with self._pending_lock:
            batch, self._pending = self._pending, {}
            claim_only, self._claim_only = getattr(self, "_claim_only", {}), {}
            self._writing = bool(batch or claim_only)
        if not batch and not claim_only:
            return
        delete = jobstore_mod._DELETE
        changes = [(job_id, value) for job_id, value in batch.items() if value is not delete]
        deletes = [job_id for job_id, value in batch.items() if value is delete]
        claim_times = {**claim_only, **{job_id: nrt for job_id, nrt in changes}}
        claims = [_claim_row(job_id, _dt(nrt)) for job_id, nrt in claim_times.items() if nrt is not None]
        for row in claims:
            row["outcome"] = "scheduled"
            row["started_at"] = None
        try:
            if changes or deletes:
                self.store.write_next_run_times(changes, deletes)
            committed: list[tuple[str, float]] = []
            if claims:
                try:
                    with self.store.engine.begin() as conn:
                        conn.execute(runs_table.insert(), claims)
                    committed = [(r["job_id"], r["scheduled_at"]) for r in claims]
                except IntegrityError:
                    for row in claims:
                        if self.store.claim_run(row):
                            committed.append((row["job_id"], row["scheduled_at"]))
            with self._preclaim_lock:
                self._preclaimed.update(committed)
        except Exception:
            self.write_errors += 1
            with self._pending_lock:
                for job_id, value in batch.items():
                    self._pending.setdefault(job_id, value)
                for job_id, value in claim_only.items():
                    self._claim_only.setdefault(job_id, value)
            raise
        finally:
            self._writing = False

    original_load = jobstore_mod.SpecJobStore.load

    def load(self: Any, jobs: list[Any]) -> None:
        # Jobs read at start-up get their next run's claim written ahead too (their next run time is already
        # stored: only the claim rows are written).
        original_load(self, jobs)
        from scheduler_core.store import to_epoch

        with self._pending_lock:
            pending = self.__dict__.setdefault("_claim_only", {})
            for job in jobs:
                if job.next_run_time is not None:
                    pending[job.id] = to_epoch(job.next_run_time)
        self._wake.set()

    engine_mod.Engine.__init__ = __init__
    engine_mod.Engine._claim = _claim
    jobstore_mod.SpecJobStore._write_pending = _write_pending
    jobstore_mod.SpecJobStore.load = load


def _dt(epoch: float) -> datetime:
    from scheduler_core.store import from_epoch

    value = from_epoch(epoch)
    assert value is not None
    return value


# --- SQL round trips ------------------------------------------------------------------------------------------
def _patch_upsert_finish() -> None:
    import sqlalchemy as sa

    from scheduler_core import store as store_mod
    from scheduler_core.store import runs_table

    def _finish_claimed(self: Any, conn: Any, rows: Sequence[dict[str, Any]]) -> int:
        # One multi-row upsert on the (job_id, scheduled_at) unique key: updates the claim rows in place.
        values = [{k: v for k, v in r.items() if k != "_claimed"} for r in rows]
        cols = store_mod.Store._FINISH_COLUMNS
        if self.dialect == "mysql" or self.dialect == "mariadb":
            from sqlalchemy.dialects.mysql import insert

            stmt = insert(runs_table)
            stmt = stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in cols})
        else:
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(runs_table)
            stmt = stmt.on_conflict_do_update(index_elements=["job_id", "scheduled_at"],
                                              set_={c: stmt.excluded[c] for c in cols})
        conn.execute(stmt, values)
        return len(values)  # every row is written: a missing claim row is inserted, not lost

    store_mod.Store._finish_claimed = _finish_claimed
    del sa


def _patch_case_nrt() -> None:
    import sqlalchemy as sa

    from scheduler_core import store as store_mod
    from scheduler_core.store import jobs_table

    def write_next_run_times(self: Any, changes: Sequence[tuple[str, float | None]],
                             deletes: Iterable[str] = ()) -> None:
        deletes = list(deletes)
        if not changes and not deletes:
            return
        with self.engine.begin() as conn:
            for start in range(0, len(changes), 500):
                chunk = dict(changes[start:start + 500])
                conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id.in_(list(chunk)), jobs_table.c.paused == sa.false())
                    .values(next_run_time=sa.case(chunk, value=jobs_table.c.id))
                )
            for start in range(0, len(deletes), 500):
                conn.execute(jobs_table.delete().where(jobs_table.c.id.in_(deletes[start:start + 500])))

    store_mod.Store.write_next_run_times = write_next_run_times


def _patch_fast_load() -> None:
    from apscheduler.util import datetime_to_utc_timestamp

    from scheduler_core import engine as engine_mod
    from scheduler_core import jobstore as jobstore_mod
    from scheduler_core import spec as spec_mod
    from scheduler_core.store import Store

    # 1. JobSpec.from_json: pydantic parses the JSON itself (no json.loads + dict walk).
    def from_json(cls: Any, text: str) -> Any:
        from pydantic import ValidationError

        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise spec_mod.SpecError(spec_mod._errors_of(exc)) from None

    spec_mod.JobSpec.from_json = classmethod(from_json)

    # 2. One read of the jobs table per start instead of three: cache it for the duration of start().
    original_start = engine_mod.Engine.start
    original_load = Store.load_jobs

    def start(self: Any, *args: Any, **kwargs: Any) -> None:
        cache: list[Any] = []

        def load_jobs(store: Any) -> list[Any]:
            if not cache:
                cache.append(original_load(store))
            return cache[0]

        self.store.load_jobs = load_jobs.__get__(self.store)
        try:
            original_start(self, *args, **kwargs)
        finally:
            del self.store.load_jobs

    engine_mod.Engine.start = start

    # 3. The memory store's list sorted once, not one insort per job.
    def load(self: Any, jobs: list[Any]) -> None:
        if self._jobs or len(jobs) < 1000:
            for job in jobs:
                job._jobstore_alias = self._alias
                jobstore_mod.MemoryJobStore.add_job(self, job)
            return
        entries = []
        for job in jobs:
            job._jobstore_alias = self._alias
            entries.append((job, datetime_to_utc_timestamp(job.next_run_time)))
        # MemoryJobStore's order: by next run time (None last), then id.
        entries.sort(key=lambda e: (e[1] is None, e[1] or 0.0, e[0].id))
        self._jobs = entries
        self._jobs_index = {job.id: (job, ts) for job, ts in entries}

    jobstore_mod.SpecJobStore.load = load


def _patch_switch_1ms() -> None:
    """Engine.start(): sys.setswitchinterval(0.001). A thread waking to fire a job waits for the GIL at most this
    long while a writer thread holds it (CPython's default is 5 ms)."""
    import sys

    from scheduler_core import engine as engine_mod

    original_start = engine_mod.Engine.start

    def start(self: Any, *args: Any, **kwargs: Any) -> None:
        sys.setswitchinterval(0.001)
        original_start(self, *args, **kwargs)

    engine_mod.Engine.start = start


def _patch_lean_poll() -> None:
    """The poller's two reads (jobs_seq, pending run requests) in ONE statement, compiled once, run on ONE
    persistent AUTOCOMMIT DBAPI connection: no pool checkout + pre-ping, no BEGIN/ROLLBACK, no per-call SQLAlchemy
    statement handling; take_run_requests' transaction only when a request exists."""
    import sqlalchemy as sa

    from scheduler_core import store as store_mod
    from scheduler_core.store import JOBS_SEQ_KEY, meta_table, run_requests_table

    original_take = store_mod.Store.take_run_requests
    state = threading.local()
    seq_q = sa.select(meta_table.c.value).where(meta_table.c.key == JOBS_SEQ_KEY).scalar_subquery()
    req_q = sa.exists(sa.select(run_requests_table.c.id))
    statement = sa.select(seq_q, req_q)

    def _cursor(self: Any) -> Any:
        conn = getattr(self, "_poll_connection", None)
        if conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            compiled = statement.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True})
            self._poll_connection = conn
            self._poll_sql = str(compiled)
            self._poll_cursor = conn.connection.driver_connection.cursor()
        return self._poll_cursor

    def jobs_seq(self: Any) -> int:
        try:
            cur = _cursor(self)
            cur.execute(self._poll_sql)
            row = cur.fetchone()
        except Exception:
            conn = getattr(self, "_poll_connection", None)
            self._poll_connection = None
            if conn is not None:
                try:
                    conn.invalidate()
                except Exception:
                    pass
            raise
        state.has_requests = bool(row[1])
        return row[0]

    def take_run_requests(self: Any) -> list[str]:
        if getattr(state, "has_requests", True) is False:
            return []
        return original_take(self)

    store_mod.Store.jobs_seq = jobs_seq
    store_mod.Store.take_run_requests = take_run_requests


def _patch_quiet_events() -> None:
    """Engine._publish builds no SchedulerEvent while nobody subscribes to the event bus (a headless daemon):
    the loop thread stops paying datetime.now() + a dataclass per submitted run."""
    from scheduler_core import engine as engine_mod

    original = engine_mod.Engine._publish

    def _publish(self: Any, *args: Any, **kwargs: Any) -> None:
        bus = self.events
        if not bus._subscriptions and not bus._callbacks:
            return
        original(self, *args, **kwargs)

    engine_mod.Engine._publish = _publish


def _patch_writer_conn() -> None:
    """The history writer and the write-behind writer each keep ONE connection for their batches (thread-local),
    instead of a pool checkout + pre-ping + reset-on-return per batch; a failed batch drops the connection so the
    next one reconnects (the outage handling stays: the error still propagates to the writer's retry loop)."""
    import sqlalchemy as sa

    from scheduler_core import store as store_mod

    local = threading.local()

    class _Persistent:
        def __init__(self, store: Any) -> None:
            self.store = store

        def begin(self) -> Any:
            store = self.store
            conn = getattr(local, "conn", None)
            if conn is None or conn.closed or conn.invalidated:
                conn = store._engine_orig.connect()
                local.conn = conn
            return _Tx(conn)

        def connect(self) -> Any:
            return self.store._engine_orig.connect()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store._engine_orig, name)

    class _Tx:
        def __init__(self, conn: Any) -> None:
            self.conn = conn
            self.tx = None

        def __enter__(self) -> Any:
            self.tx = self.conn.begin()
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                if exc_type is None:
                    self.tx.commit()
                else:
                    self.tx.rollback()
            except Exception:
                self.conn.invalidate()
                local.conn = None
                raise
            if exc_type is not None and isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
                local.conn = None

    class _StoreView:
        """The store as the writer sees it: same methods and state, but `engine.begin()` on its own connection."""

        def __init__(self, store: Any) -> None:
            self._store = store
            self.engine = _Persistent(store)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._store, name)

    def wrap(name: str) -> None:
        original = getattr(store_mod.Store, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            view = self.__dict__.get("_writer_view")
            if view is None:
                self._engine_orig = self.engine
                view = self.__dict__.setdefault("_writer_view", _StoreView(self))
            return original(view, *args, **kwargs)

        setattr(store_mod.Store, name, method)

    for name in ("insert_runs", "write_next_run_times"):
        wrap(name)
