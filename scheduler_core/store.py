"""The SQL store: jobs as JSON rows, run history, users, the leader lease. SQLAlchemy Core, never pickle.

Tables are created and upgraded by the alembic migrations in `migrations/` (the `Table` objects here describe the
newest schema for queries). Times are stored as UTC epoch seconds in DOUBLE columns: portable across SQLite,
MariaDB and PostgreSQL, exact to the microsecond, and free of each dialect's timezone quirks.
"""

from __future__ import annotations

import functools
import logging
import operator
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.exc import IntegrityError, OperationalError

from .errors import ConflictingId, DatabaseUnavailable, JobNotFound

log = logging.getLogger(__name__)

metadata = sa.MetaData()

jobs_table = sa.Table(
    "carnation_jobs",
    metadata,
    sa.Column("id", sa.String(191), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    # Not indexed: every fire rewrites it and no query selects by it (migrations/versions/0004).
    sa.Column("next_run_time", sa.Double, nullable=True),
    # The latest scheduled run the executor may start (see migrations/versions/0003).
    sa.Column("claimed_until", sa.Double, nullable=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("broken", sa.Text, nullable=True),
    sa.Column("source", sa.String(16), nullable=False, default="user"),
    sa.Column("seq", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

runs_table = sa.Table(
    "carnation_runs",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(191), nullable=False),
    sa.Column("scheduled_at", sa.Double, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Double, nullable=True),
    sa.Column("finished_at", sa.Double, nullable=True),
    sa.Column("duration", sa.Double, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("return_value", sa.Text, nullable=True),
    sa.Column("exception", sa.Text, nullable=True),
    sa.Column("traceback", sa.Text, nullable=True),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("recorded_at", sa.Double, nullable=False),
    # One row per scheduled time: a run executed twice cannot hide.
    sa.UniqueConstraint("job_id", "scheduled_at", name="uq_carnation_runs_job_scheduled"),
    sa.Index("ix_carnation_runs_job_id_id", "job_id", "id"),
    sa.Index("ix_carnation_runs_recorded_at", "recorded_at"),
    sa.Index("ix_carnation_runs_outcome_recorded_at", "outcome", "recorded_at"),
)

meta_table = sa.Table(
    "carnation_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

users_table = sa.Table(
    "carnation_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(150), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

leader_table = sa.Table(
    "carnation_leader",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.Double, nullable=False),
    sa.Column("heartbeat_at", sa.Double, nullable=False),
)

run_requests_table = sa.Table(
    "carnation_run_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(191), nullable=False),
    sa.Column("requested_at", sa.Double, nullable=False),
    sa.Column("requested_by", sa.String(255), nullable=False),
)

OUTCOMES = ("success", "error", "timeout", "missed", "skipped", "running", "abandoned")
JOBS_SEQ_KEY = "jobs_seq"
LEASE_NAME = "executor"


class _ClaimsMissing(Exception):
    """Some finished runs found no claim row to update (e.g. pruned meanwhile): write them one by one."""


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A history row without the engine's bookkeeping keys (those starting with "_")."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def lease_is_live(heartbeat_at: float, lease_seconds: float, now: float) -> bool:
    return heartbeat_at >= now - lease_seconds


def to_epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    spec: str
    next_run_time: float | None
    paused: bool
    broken: str | None
    source: str
    seq: int
    claimed_until: float | None = None


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """The lease was acquired. `previous_heartbeat` is the last heartbeat of the process that held it before (None
    if it had been released cleanly or never held): the runs that process may have started end before
    previous_heartbeat + 0.75 x lease_seconds, when it stops executing by itself (Engine._keep_lease)."""

    previous_heartbeat: float | None


def redact_url(url: str) -> str:
    """The URL with its password hidden, fit for a status bar or a log line."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets consoles read while the executing process writes; busy_timeout waits out short write locks
    # instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_db_engine(url: str) -> SAEngine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping and recycle: survive a database restart and MySQL's wait_timeout without a stale-connection error.
    return sa.create_engine(url, pool_pre_ping=True, pool_recycle=1800, pool_size=5, max_overflow=10)


# What the poller asks four times a second, in one statement: the jobs counter and whether a run was requested.
_POLL_QUERY = sa.select(
    sa.select(meta_table.c.value).where(meta_table.c.key == JOBS_SEQ_KEY).scalar_subquery(),
    sa.exists(sa.select(run_requests_table.c.id)),
)


class KeptConnection:
    """A connection a writer thread keeps between its batches: no pool checkout, pre-ping and reset per batch (a
    third of the history writer's CPU on MariaDB and PostgreSQL). Dropped after a connection error and reopened on
    the next batch, and renewed after IDLE_LIMIT unused (MySQL closes idle sessions after wait_timeout)."""

    IDLE_LIMIT = 300.0

    def __init__(self, engine: SAEngine) -> None:
        self._engine = engine
        self._conn: sa.Connection | None = None
        self._last_used = 0.0

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        if self._conn is not None and time.monotonic() - self._last_used > self.IDLE_LIMIT:
            self.close()
        if self._conn is None:
            self._conn = self._engine.connect()
        self._last_used = time.monotonic()
        try:
            with self._conn.begin():
                yield self._conn
        except sa.exc.DBAPIError as exc:
            if not isinstance(exc, IntegrityError):
                self.close(invalidate=True)
            raise

    def close(self, invalidate: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if invalidate:
                conn.invalidate()
            conn.close()
        except Exception:  # already broken: nothing to give back
            pass


Connectable = SAEngine | KeptConnection


class Store:
    """All SQL carnation runs. Thread-safe: each call takes its own connection from the pool (but `poll`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self.dialect = self.engine.dialect.name
        self._case_update: sa.Update | None = None
        # poll()'s own connection, kept open, and its SQL compiled once (no parameters, so no per-call binding).
        self._poll_sql = str(_POLL_QUERY.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True}))
        self._poll_lock = threading.Lock()
        self._poll_conn: sa.Connection | None = None
        self._poll_cursor: Any = None

    def close(self) -> None:
        self.end_poll()
        self.engine.dispose()

    @property
    def shared_between_processes(self) -> bool:
        """False for an in-memory SQLite database, which only this process can open."""
        url = self.engine.url
        return not (self.dialect == "sqlite" and url.database in (None, "", ":memory:"))

    def kept_connection(self) -> KeptConnection:
        """A connection for one writer thread to keep (see KeptConnection)."""
        return KeptConnection(self.engine)

    # --- schema -----------------------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create or upgrade the schema to the newest version (alembic)."""
        from .migrations import upgrade

        try:
            upgrade(self.engine)
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot reach the database {redact_url(self.url)}: {exc.orig}") from exc

    def schema_version(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                return conn.execute(sa.text("SELECT version_num FROM carnation_alembic_version")).scalar()
            except sa.exc.DBAPIError:
                return None

    # --- jobs ---------------------------------------------------------------------------------------------------
    def _bump_seq(self, conn: sa.Connection) -> sa.ScalarSelect[int]:
        """Bump the change counter. Returns its value as a scalar subquery for the edited row's seq: the same
        INSERT/UPDATE reads it, no SELECT round trip of its own. Bump first in the transaction: the counter row's
        lock then orders concurrent edits, so the subquery reads the value this edit wrote."""
        meta = meta_table.c
        conn.execute(meta_table.update().where(meta.key == JOBS_SEQ_KEY).values(value=meta.value + 1))
        return sa.select(meta.value).where(meta.key == JOBS_SEQ_KEY).scalar_subquery()

    def jobs_seq(self) -> int:
        """A counter bumped by every change of a job's definition or paused state, by any process."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == JOBS_SEQ_KEY)).scalar_one()

    def poll(self) -> tuple[int, bool]:
        """(jobs_seq, whether run requests are pending): the change poller's look, at the least cost per call.

        One round trip on a connection kept open for it (meant for one thread, the poller; a lock guards it) in
        autocommit mode: no pool checkout, pre-ping, BEGIN or COMMIT. Autocommit also means every call sees the
        newest commits: a transaction held open would keep InnoDB's REPEATABLE READ snapshot of its first read."""
        with self._poll_lock:
            while True:
                fresh = self._poll_cursor is None
                try:
                    if fresh:
                        self._poll_conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                        self._poll_cursor = self._poll_conn.connection.driver_connection.cursor()
                    self._poll_cursor.execute(self._poll_sql)
                    seq, pending = self._poll_cursor.fetchone()
                    return seq, bool(pending)
                except Exception:
                    self._drop_poll_connection(broken=True)
                    if fresh:
                        raise
                    # A connection kept from before may have died meanwhile (database restarted): retry once.

    def end_poll(self) -> None:
        """Give poll()'s connection back (the poller does when it stops); the next poll() opens a new one."""
        with self._poll_lock:
            self._drop_poll_connection(broken=False)

    def _drop_poll_connection(self, broken: bool) -> None:
        conn, self._poll_conn, self._poll_cursor = self._poll_conn, None, None
        if conn is not None:
            try:
                if broken:
                    conn.invalidate()  # never back into the pool
                conn.close()
            except Exception:
                pass

    def load_jobs(self, *where: sa.ColumnElement[bool]) -> list[JobRow]:
        """Job rows, all or those matching `where` (conditions on jobs_table's columns)."""
        cols = jobs_table.c
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(cols.id, cols.spec, cols.next_run_time, cols.paused, cols.broken, cols.source, cols.seq,
                          cols.claimed_until).where(*where)
            )
            return [JobRow(*row) for row in result]

    def get_job_row(self, job_id: str) -> JobRow:
        cols = jobs_table.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(cols.id, cols.spec, cols.next_run_time, cols.paused, cols.broken, cols.source, cols.seq,
                          cols.claimed_until)
                .where(cols.id == job_id)
            ).first()
        if row is None:
            raise JobNotFound(job_id)
        return JobRow(*row)

    def insert_job(
        self, job_id: str, spec_json: str, next_run_time: float | None, paused: bool, source: str = "user"
    ) -> None:
        now = time.time()
        try:
            with self.engine.begin() as conn:
                seq = self._bump_seq(conn)  # a duplicate id fails the INSERT and rolls the bump back with it
                conn.execute(
                    jobs_table.insert().values(
                        id=job_id, spec=spec_json, next_run_time=next_run_time, paused=paused, broken=None,
                        source=source, seq=seq, created_at=now, updated_at=now,
                    )
                )
        except IntegrityError:
            raise ConflictingId(job_id) from None

    def update_job(
        self,
        job_id: str,
        *,
        spec_json: str | None = None,
        next_run_time: float | None = None,
        paused: bool | None = None,
        broken: str | None = None,
        source: str | None = None,
    ) -> None:
        """Change a job's definition and/or state (a user's edit): bumps the change counter."""
        values: dict[str, Any] = {"next_run_time": next_run_time, "broken": broken, "updated_at": time.time()}
        if spec_json is not None:
            values["spec"] = spec_json
        if paused is not None:
            values["paused"] = paused
        if source is not None:
            values["source"] = source
        with self.engine.begin() as conn:
            values["seq"] = self._bump_seq(conn)
            result = conn.execute(jobs_table.update().where(jobs_table.c.id == job_id).values(**values))
            if result.rowcount == 0:
                raise JobNotFound(job_id)  # rolls the bump back

    def mark_broken(self, job_id: str, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                jobs_table.update().where(jobs_table.c.id == job_id).values(broken=reason, updated_at=time.time())
            )

    def delete_job(self, job_id: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(jobs_table.delete().where(jobs_table.c.id == job_id))
            if result.rowcount:
                self._bump_seq(conn)
            return bool(result.rowcount)

    def write_next_run_times(
        self,
        changes: Sequence[tuple[str, float | None, float | None]],
        deletes: Iterable[str] = (),
        claims: Sequence[tuple[str, float]] = (),
        via: KeptConnection | None = None,
    ) -> None:
        """Write-behind of what the scheduler loop decided: (id, next run time, claimed until) of moved jobs, the
        claim covering that run and possibly later ones (None: the claim stays as it is), and finished jobs.
        `claims` claim runs without moving the next run time (a job loaded with an unclaimed one). No seq bump:
        these are the executor's own bookkeeping, not edits other processes must react to."""
        deletes = list(deletes)
        if not changes and not deletes and not claims:
            return
        cols = jobs_table.c
        with (via or self.engine).begin() as conn:
            if changes and self.dialect == "mysql":
                self._write_next_run_times_by_case(conn, changes)
            elif changes and self.dialect == "postgresql":
                # One statement over three arrays: psycopg's pipelined executemany still has the server plan and run
                # one UPDATE per row (200 rows: 4.1 -> 1.2 ms of the writer's CPU, 4.3 -> 2.4 ms of the server's).
                conn.exec_driver_sql(self._write_next_run_times_sql, tuple(map(list, zip(*changes))))
            elif changes:
                # The driver's executemany (as for history rows): Core's per-row parameter processing held the GIL
                # ~4 ms per batch at 10,000 jobs, and a run due meanwhile waited for it.
                conn.exec_driver_sql(self._write_next_run_times_sql,
                                     [(at, claim, job_id) for job_id, at, claim in changes])
            if claims:
                conn.execute(
                    jobs_table.update()
                    .where(cols.id == sa.bindparam("b_id"),
                           sa.or_(cols.claimed_until.is_(None), cols.claimed_until < sa.bindparam("b_claim")))
                    .values(claimed_until=sa.bindparam("b_claim")),
                    [{"b_id": job_id, "b_claim": at} for job_id, at in claims],
                )
            if deletes:
                self._delete_jobs(conn, deletes)

    def _delete_jobs(self, conn: sa.Connection, ids: list[str]) -> None:
        """Rows of finished one-off jobs, many at once after a burst of them."""
        quote = self.engine.dialect.identifier_preparer.quote
        table, id_ = quote(jobs_table.name), quote("id")
        if self.dialect == "postgresql":
            # One array parameter: no statement text per batch size for psycopg to parse and prepare.
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE {id_} = ANY(%s)", (ids,))
        elif self.dialect == "sqlite":
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE {id_} = ?", [(job_id,) for job_id in ids])
        else:  # MariaDB: pymysql sends an executemany DELETE as one round trip per row
            for start in range(0, len(ids), 500):
                conn.execute(jobs_table.delete().where(jobs_table.c.id.in_(ids[start:start + 500])))

    CLAIM_AHEAD_CHUNK = 500  # rows per UPDATE ... CASE: ~1,000 parameters, under every database's limit

    def claim_stored_next_run_times(self, unchanged_since_seq: int, ahead: Sequence[tuple[str, float]] = ()) -> None:
        """Claim every stored next run time not claimed yet, on rows no edit touched after `unchanged_since_seq`: a
        process taking over (or a database where jobs were added with no executor running) claims them in a few
        statements instead of one write per job. `ahead`: (id, claimed until) of frequent jobs claimed further,
        to a later fire of theirs (jobstore.py), as their first fire would otherwise write one by one."""
        cols = jobs_table.c
        unclaimed = (cols.paused == sa.false(), cols.next_run_time.is_not(None), cols.seq <= unchanged_since_seq,
                     sa.or_(cols.claimed_until.is_(None), cols.claimed_until < cols.next_run_time))
        with self.engine.begin() as conn:
            for start in range(0, len(ahead), self.CLAIM_AHEAD_CHUNK):
                chunk = dict(ahead[start:start + self.CLAIM_AHEAD_CHUNK])
                conn.execute(jobs_table.update().where(*unclaimed, cols.id.in_(list(chunk)))
                             .values(claimed_until=sa.case(chunk, value=cols.id)))
            conn.execute(jobs_table.update().where(*unclaimed).values(claimed_until=cols.next_run_time))

    @functools.cached_property
    def _write_next_run_times_sql(self) -> str:
        # A paused job keeps NULL even if a fire raced the pause; the claim is written regardless, so a run that
        # does start is always covered.
        quote = self.engine.dialect.identifier_preparer.quote
        nrt, claimed, paused, id_ = (quote(c) for c in ("next_run_time", "claimed_until", "paused", "id"))
        table = quote(jobs_table.name)
        if self.dialect == "postgresql":
            return (f"UPDATE {table} SET {nrt} = CASE WHEN {table}.{paused} THEN {table}.{nrt} ELSE v.at END, "
                    f"{claimed} = COALESCE(v.claim, {table}.{claimed}) "
                    f"FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS v(id, at, claim) "
                    f"WHERE {table}.{id_} = v.id")
        p = self._placeholder
        return (f"UPDATE {table} SET {nrt} = CASE WHEN {paused} THEN {nrt} ELSE {p} END, "
                f"{claimed} = COALESCE({p}, {claimed}) WHERE {id_} = {p}")

    @property
    def _placeholder(self) -> str:
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    CASE_CHUNK = 100

    def _write_next_run_times_by_case(self, conn: sa.Connection,
                                      changes: Sequence[tuple[str, float | None, float | None]]) -> None:
        """MariaDB/MySQL: pymysql sends an executemany UPDATE as one round trip per row (355 µs wall each here), so
        CASE_CHUNK rows go in one UPDATE ... CASE id WHEN ... instead. Every statement has exactly CASE_CHUNK rows
        (the last one repeated): one SQL shape, compiled once, however big the batch."""
        chunk_size = self.CASE_CHUNK
        if self._case_update is None:
            cols = jobs_table.c
            ids = [sa.bindparam(f"i{i}", type_=cols.id.type) for i in range(chunk_size)]
            new = sa.case(*[(ids[i], sa.bindparam(f"n{i}", type_=sa.Double)) for i in range(chunk_size)],
                          value=cols.id)
            claim = sa.case(*[(ids[i], sa.bindparam(f"c{i}", type_=sa.Double)) for i in range(chunk_size)],
                            value=cols.id)
            self._case_update = (
                jobs_table.update().where(cols.id.in_(ids))
                .values(next_run_time=sa.case((cols.paused == sa.true(), cols.next_run_time), else_=new),
                        claimed_until=sa.func.coalesce(claim, cols.claimed_until))
            )
        for start in range(0, len(changes), chunk_size):
            chunk = list(changes[start:start + chunk_size])
            chunk += [chunk[-1]] * (chunk_size - len(chunk))
            params: dict[str, Any] = {}
            for i, (job_id, at, claimed_until) in enumerate(chunk):
                params[f"i{i}"] = job_id
                params[f"n{i}"] = at
                params[f"c{i}"] = claimed_until
            conn.execute(self._case_update, params)

    def request_run(self, job_id: str, requested_by: str) -> None:
        """Ask the executing process (whichever it is) to run `job_id` now."""
        self.get_job_row(job_id)
        with self.engine.begin() as conn:
            conn.execute(run_requests_table.insert().values(job_id=job_id, requested_at=time.time(),
                                                            requested_by=requested_by))

    def take_run_requests(self) -> list[str]:
        """Claim and delete pending run requests (the executing process calls this)."""
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(run_requests_table.c.id, run_requests_table.c.job_id)
                                .order_by(run_requests_table.c.id)).all()
            if rows:
                conn.execute(run_requests_table.delete().where(run_requests_table.c.id.in_([r[0] for r in rows])))
        return [r[1] for r in rows]

    # --- runs -----------------------------------------------------------------------------------------------
    def claim_run(self, row: dict[str, Any]) -> bool:
        """Insert a run's "running" row before it starts. False if that (job, scheduled time) was claimed before."""
        try:
            with self.engine.begin() as conn:
                conn.execute(runs_table.insert(), [row])
            return True
        except IntegrityError:
            return False

    def insert_runs(
        self, rows: Sequence[dict[str, Any]], via: KeptConnection | None = None, resent: bool = False
    ) -> tuple[int, list[dict[str, Any]]]:
        """Write finished runs in one transaction: a run claimed by a "running" row (run now) updates it, others
        are inserted. On a unique clash fall back to one by one, where an outcome replaces an "abandoned" row (a
        process that took over recorded the run as possibly started; this is how it ended). Returns (written,
        duplicates): duplicates are runs of a (job, scheduled time) already recorded. `resent`: these rows may
        have been written already (by a writer process that died or was killed before it answered); a row found
        as written, by the host, process and time it was recorded, is not a duplicate."""
        if not rows:
            return 0, []
        source: Connectable = via or self.engine
        claimed = [r for r in rows if r.get("_claimed")]
        # _insert_runs takes the columns by name, so the bookkeeping keys need no copy of each row without them.
        fresh = [r for r in rows if not r.get("_claimed")] if claimed else rows
        try:
            with source.begin() as conn:
                if claimed:
                    updated = self._finish_claimed(conn, claimed)
                    if updated < len(claimed):
                        raise _ClaimsMissing()
                if fresh:
                    self._insert_runs(conn, fresh)
            return len(rows), []
        except (IntegrityError, _ClaimsMissing):
            pass
        written, duplicates = 0, []
        for row in rows:
            plain = _plain(row)
            try:
                with source.begin() as conn:
                    if row.get("_claimed") and self._finish_claimed(conn, [row]):
                        written += 1
                        continue
                    conn.execute(runs_table.insert(), [plain])
                written += 1
            except IntegrityError:
                with source.begin() as conn:
                    if self._finish_claimed(conn, [row], replacing="abandoned"):
                        written += 1
                    elif resent and self._recorded_already(conn, plain):
                        written += 1
                    else:
                        duplicates.append(plain)
        return written, duplicates

    @staticmethod
    def _recorded_already(conn: sa.Connection, row: dict[str, Any]) -> bool:
        cols = runs_table.c
        return conn.execute(sa.select(cols.id).where(
            cols.job_id == row["job_id"], cols.scheduled_at == row["scheduled_at"], cols.host == row["host"],
            cols.pid == row["pid"], cols.recorded_at == row["recorded_at"], cols.outcome == row["outcome"],
        )).first() is not None

    _RUN_COLUMNS = tuple(c.name for c in runs_table.c if c.name != "id")
    _run_values = staticmethod(operator.itemgetter(*_RUN_COLUMNS))

    def _insert_runs(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        # The driver's own executemany (sqlite3's, pymysql's multi-row INSERT): Core's per-row parameter
        # processing cost 3 to 4 times its CPU per row, for columns that need no conversion. sqlite3 also lets go
        # of the GIL while SQLite works, so a batch does not hold up the run that is due meanwhile.
        if self.engine.dialect.driver == "psycopg":  # (postgresql+psycopg2:// has no cursor.copy)
            self._copy_runs(conn, map(self._run_values, rows))
        else:
            conn.exec_driver_sql(self._insert_runs_sql, list(map(self._run_values, rows)))

    def _copy_runs(self, conn: sa.Connection, values: Iterable[tuple[Any, ...]]) -> None:
        # COPY: psycopg writes the rows in C, a quarter of its executemany's CPU per row (4 against 15 µs). A clash
        # on the unique key fails the whole COPY, as it would the INSERT: insert_runs then goes row by row.
        import psycopg

        statement = f"COPY {self._runs_into} FROM STDIN"
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(statement) as copy:
                for row in values:
                    copy.write_row(row)
        except psycopg.Error as exc:
            # Wrapped as SQLAlchemy wraps what the driver raises (IntegrityError, OperationalError, ...): callers,
            # and KeptConnection, which drops a broken connection, see the same types as on the other paths.
            raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
        finally:
            cursor.close()

    @functools.cached_property
    def _runs_into(self) -> str:
        """`carnation_runs (job_id, ...)`, quoted for this dialect: the target of the INSERT and of COPY."""
        quote = self.engine.dialect.identifier_preparer.quote
        return f"{quote(runs_table.name)} ({', '.join(map(quote, self._RUN_COLUMNS))})"

    @functools.cached_property
    def _insert_runs_sql(self) -> str:
        return f"INSERT INTO {self._runs_into} VALUES ({', '.join([self._placeholder] * len(self._RUN_COLUMNS))})"

    _FINISH_COLUMNS = ("host", "pid", "started_at", "finished_at", "duration", "outcome", "return_value", "exception",
                       "traceback", "output", "exit_code", "http_status", "recorded_at")

    def _finish_claimed(self, conn: sa.Connection, rows: Sequence[dict[str, Any]], replacing: str = "running") -> int:
        statement = (
            runs_table.update()
            .where(runs_table.c.job_id == sa.bindparam("b_job_id"),
                   runs_table.c.scheduled_at == sa.bindparam("b_scheduled_at"),
                   # Not IN (...): an expanding parameter cannot be used with executemany.
                   sa.or_(runs_table.c.outcome == "running", runs_table.c.outcome == "abandoned")
                   if replacing == "running" else runs_table.c.outcome == replacing)
            .values({name: sa.bindparam(f"b_{name}") for name in self._FINISH_COLUMNS})
        )
        params = [{f"b_{k}": v for k, v in _plain(r).items()} for r in rows]
        return conn.execute(statement, params).rowcount

    def abandon_running(self, host: str, pid: int) -> int:
        """Runs left "running" by processes other than (host, pid) will never finish: say so."""
        with self.engine.begin() as conn:
            return conn.execute(
                runs_table.update()
                .where(runs_table.c.outcome == "running", sa.not_(sa.and_(runs_table.c.host == host,
                                                                          runs_table.c.pid == pid)))
                .values(outcome="abandoned", exception="its process stopped before the outcome was recorded")
            ).rowcount

    def last_handled(self) -> dict[str, float]:
        """The latest scheduled time each job has a run row for (ran, running, missed or skipped)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs_table.c.job_id, sa.func.max(runs_table.c.scheduled_at))
                                .group_by(runs_table.c.job_id)).all()
        return {job_id: at for job_id, at in rows}

    # --- the executor lease ------------------------------------------------------------------------------------
    def try_acquire_lease(self, holder: str, host: str, pid: int, lease_seconds: float) -> LeaseGrant | None:
        """Become the executing process if nobody holds a live lease (None otherwise). Compare-and-swap on the
        lease row, so two processes racing for an expired lease cannot both win."""
        now = time.time()
        table = leader_table
        try:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(table.c.holder, table.c.heartbeat_at)
                                   .where(table.c.name == LEASE_NAME)).first()
                if row is None:
                    conn.execute(table.insert().values(name=LEASE_NAME, holder=holder, host=host, pid=pid,
                                                       acquired_at=now, heartbeat_at=now))
                    return LeaseGrant(previous_heartbeat=None)
                if row.holder == holder:
                    # Ours, but this process stepped down meanwhile: its earlier runs count as another executor's.
                    return LeaseGrant(row.heartbeat_at) if self._renew(conn, holder, now) else None
                if lease_is_live(row.heartbeat_at, lease_seconds, now):
                    return None
                result = conn.execute(
                    table.update()
                    .where(table.c.name == LEASE_NAME, table.c.holder == row.holder,
                           table.c.heartbeat_at == row.heartbeat_at)
                    .values(holder=holder, host=host, pid=pid, acquired_at=now, heartbeat_at=now)
                )
                return LeaseGrant(row.heartbeat_at) if result.rowcount == 1 else None
        except IntegrityError:
            return None

    def _renew(self, conn: sa.Connection, holder: str, now: float) -> bool:
        result = conn.execute(leader_table.update()
                              .where(leader_table.c.name == LEASE_NAME, leader_table.c.holder == holder)
                              .values(heartbeat_at=now))
        return result.rowcount == 1

    def renew_lease(self, holder: str) -> bool:
        """Keep the lease. False if another process holds it now (this one must stop executing)."""
        with self.engine.begin() as conn:
            return self._renew(conn, holder, time.time())

    def release_lease(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(leader_table.delete().where(leader_table.c.name == LEASE_NAME,
                                                     leader_table.c.holder == holder))

    def lease_holder(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leader_table).where(leader_table.c.name == LEASE_NAME)).mappings().first()
        return dict(row) if row else None

    def someone_executes(self, lease_seconds: float) -> bool:
        """A process holds the lease and its heartbeat is recent enough for nobody to take it over."""
        holder = self.lease_holder()
        return holder is not None and lease_is_live(holder["heartbeat_at"], lease_seconds, time.time())

    def runs_page(
        self, job_id: str | None = None, page: int = 1, per_page: int = 50, outcome: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of runs, newest first, and the total count."""
        conditions = []
        if job_id is not None:
            conditions.append(runs_table.c.job_id == job_id)
        if outcome is not None:
            conditions.append(runs_table.c.outcome == outcome)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(runs_table).where(*conditions)).scalar_one()
            rows = conn.execute(
                sa.select(runs_table).where(*conditions).order_by(runs_table.c.id.desc())
                .limit(per_page).offset((page - 1) * per_page)
            ).mappings().all()
        return [dict(r) for r in rows], total

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id)).mappings().first()
        return dict(row) if row else None

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """The newest run of every job that has one."""
        latest = sa.select(sa.func.max(runs_table.c.id).label("id")).group_by(runs_table.c.job_id).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs_table).join(latest, runs_table.c.id == latest.c.id)).mappings().all()
        return {r["job_id"]: dict(r) for r in rows}

    def count_runs(self, since: float | None = None, outcome: str | Sequence[str] | None = None) -> int:
        conditions = []
        if since is not None:
            conditions.append(runs_table.c.recorded_at >= since)
        if isinstance(outcome, str):
            conditions.append(runs_table.c.outcome == outcome)
        elif outcome is not None:
            conditions.append(runs_table.c.outcome.in_(list(outcome)))
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(runs_table).where(*conditions)).scalar_one()

    PRUNE_CHUNK = 1000  # rows deleted per transaction
    PRUNE_PAUSE = 0.005  # seconds between transactions on SQLite

    def prune_runs(self, keep_per_job: int | None = None, max_age_seconds: float | None = None) -> int:
        """Delete history beyond the retention limits. Returns the number of rows deleted.

        In short transactions of at most PRUNE_CHUNK rows (on SQLite with a pause between them), never one long one:
        on SQLite a transaction holds the database's only write lock, and every history insert and claim would wait
        for the whole prune. Jobs with few excess rows share a transaction, so 10,000 jobs do not mean 10,000 commits and
        pauses on the poller thread (which also renews the lease)."""
        cols, chunk = runs_table.c, self.PRUNE_CHUNK
        deleted = 0
        # One connection throughout: no pool checkout (and pre-ping) per chunk.
        with self.engine.connect() as conn:

            def delete(statement: sa.Executable, params: list[dict[str, Any]] | None = None) -> None:
                nonlocal deleted
                conn.rollback()  # end the reads before it: a snapshot held across the prune is a long transaction too
                with conn.begin():
                    deleted += conn.execute(statement, params).rowcount
                if self.dialect == "sqlite":  # hand its one write lock to a waiting writer (servers lock rows)
                    time.sleep(self.PRUNE_PAUSE)

            def delete_selected(select_ids: sa.Select[Any]) -> None:
                # Ids first, then delete by id: MariaDB refuses a LIMIT in an IN subquery, and selecting from the
                # table being deleted from.
                while ids := conn.execute(select_ids.limit(chunk)).scalars().all():
                    delete(runs_table.delete().where(cols.id.in_(ids)))
                    if len(ids) < chunk:
                        break

            if max_age_seconds is not None:
                cutoff = time.time() - max_age_seconds
                delete_selected(sa.select(cols.id).where(cols.recorded_at < cutoff).order_by(cols.recorded_at))
            if keep_per_job is not None:
                trim = runs_table.delete().where(cols.job_id == sa.bindparam("b_job"), cols.id < sa.bindparam("b_id"))
                batch: list[dict[str, Any]] = []
                batch_rows = 0
                over = (sa.select(cols.job_id, sa.func.count().label("n")).group_by(cols.job_id)
                        .having(sa.func.count() > keep_per_job).subquery())
                kept = runs_table.alias()
                # Each job over its limit with the id of its oldest row to keep (everything older goes), in one query:
                # one round trip, not one per job.
                oldest_kept = (sa.select(kept.c.id).where(kept.c.job_id == over.c.job_id).order_by(kept.c.id.desc())
                               .offset(keep_per_job - 1).limit(1).scalar_subquery())
                for job_id, count, boundary in conn.execute(sa.select(over.c.job_id, over.c.n, oldest_kept)).all():
                    excess = count - keep_per_job
                    if excess > chunk:  # a job far over its limit (e.g. the limit just lowered): chunks of its own
                        delete_selected(sa.select(cols.id).where(cols.job_id == job_id, cols.id < boundary)
                                        .order_by(cols.id))
                        continue
                    if batch_rows + excess > chunk:
                        delete(trim, batch)
                        batch, batch_rows = [], 0
                    batch.append({"b_job": job_id, "b_id": boundary})
                    batch_rows += excess
                if batch:
                    delete(trim, batch)
        return deleted

    # --- users of the HTTP API (passwords arrive already hashed; see scheduler_core.api.auth) ----------------------
    def get_user(self, username: str) -> tuple[str, str] | None:
        """(username, password_hash) of `username`, or None."""
        cols = users_table.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(cols.username, cols.password_hash).where(cols.username == username)).first()
        # MariaDB's default collation compares case- and accent-insensitively: insist on the exact name.
        return (row[0], row[1]) if row is not None and row[0] == username else None

    def list_users(self) -> list[tuple[str, float]]:
        """(username, created_at epoch) of every user, by name."""
        cols = users_table.c
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(sa.select(cols.username, cols.created_at).order_by(cols.username))]

    def count_users(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(users_table)).scalar_one()

    def add_user(self, username: str, password_hash: str) -> bool:
        """False if the name is taken."""
        try:
            with self.engine.begin() as conn:
                conn.execute(users_table.insert().values(username=username, password_hash=password_hash,
                                                         created_at=time.time()))
        except IntegrityError:
            return False
        return True

    def set_user_password(self, username: str, password_hash: str) -> bool:
        """False if there is no such user."""
        with self.engine.begin() as conn:
            result = conn.execute(users_table.update().where(users_table.c.username == username)
                                  .values(password_hash=password_hash))
            return bool(result.rowcount)

    def remove_user(self, username: str) -> bool:
        """False if there was no such user."""
        with self.engine.begin() as conn:
            return bool(conn.execute(users_table.delete().where(users_table.c.username == username)).rowcount)
