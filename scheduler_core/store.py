"""The SQL store: jobs as JSON rows, run history, users, the leader lease. SQLAlchemy Core, never pickle.

Tables are created and upgraded by the alembic migrations in `migrations/` (the `Table` objects here describe the
newest schema for queries). Times are stored as UTC epoch seconds in DOUBLE columns: portable across SQLite,
MariaDB and PostgreSQL, exact to the microsecond, and free of each dialect's timezone quirks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
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
    sa.Column("next_run_time", sa.Double, nullable=True, index=True),
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


class Store:
    """All SQL carnation runs. Thread-safe: each call takes its own connection from the pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self.dialect = self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

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
    def _bump_seq(self, conn: sa.Connection) -> int:
        conn.execute(meta_table.update().where(meta_table.c.key == JOBS_SEQ_KEY).values(value=meta_table.c.value + 1))
        return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == JOBS_SEQ_KEY)).scalar_one()

    def jobs_seq(self) -> int:
        """A counter bumped by every change of a job's definition or paused state, by any process."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == JOBS_SEQ_KEY)).scalar_one()

    def load_jobs(self) -> list[JobRow]:
        cols = jobs_table.c
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(cols.id, cols.spec, cols.next_run_time, cols.paused, cols.broken, cols.source, cols.seq)
            )
            return [JobRow(*row) for row in result]

    def get_job_row(self, job_id: str) -> JobRow:
        cols = jobs_table.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(cols.id, cols.spec, cols.next_run_time, cols.paused, cols.broken, cols.source, cols.seq)
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
                seq = self._bump_seq(conn)
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
                raise JobNotFound(job_id)

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

    def write_next_run_times(self, changes: Sequence[tuple[str, float | None]], deletes: Iterable[str] = ()) -> None:
        """Write-behind of what the scheduler loop decided: next run times and finished jobs. No seq bump: these
        are the executor's own bookkeeping, not edits other processes must react to."""
        deletes = list(deletes)
        if not changes and not deletes:
            return
        with self.engine.begin() as conn:
            if changes:
                conn.execute(
                    jobs_table.update()
                    # A paused job keeps NULL even if a fire raced the pause.
                    .where(jobs_table.c.id == sa.bindparam("b_id"), jobs_table.c.paused == sa.false())
                    .values(next_run_time=sa.bindparam("b_nrt")),
                    [{"b_id": job_id, "b_nrt": nrt} for job_id, nrt in changes],
                )
            if deletes:
                for start in range(0, len(deletes), 500):
                    conn.execute(jobs_table.delete().where(jobs_table.c.id.in_(deletes[start:start + 500])))

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

    def insert_runs(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        """Write finished runs in one transaction: a claimed run updates its "running" row, others are inserted.
        On a unique clash fall back to one by one. Returns (written, duplicates): duplicates are inserts of a
        (job, scheduled time) already recorded."""
        if not rows:
            return 0, []
        claimed = [r for r in rows if r.get("_claimed")]
        fresh = [{k: v for k, v in r.items() if k != "_claimed"} for r in rows if not r.get("_claimed")]
        try:
            with self.engine.begin() as conn:
                if claimed:
                    updated = self._finish_claimed(conn, claimed)
                    if updated < len(claimed):
                        raise _ClaimsMissing()
                if fresh:
                    conn.execute(runs_table.insert(), fresh)
            return len(rows), []
        except (IntegrityError, _ClaimsMissing):
            pass
        written, duplicates = 0, []
        for row in rows:
            plain = {k: v for k, v in row.items() if k != "_claimed"}
            try:
                with self.engine.begin() as conn:
                    if row.get("_claimed") and self._finish_claimed(conn, [row]):
                        written += 1
                        continue
                    conn.execute(runs_table.insert(), [plain])
                written += 1
            except IntegrityError:
                duplicates.append(plain)
        return written, duplicates

    _FINISH_COLUMNS = ("host", "pid", "started_at", "finished_at", "duration", "outcome", "return_value", "exception",
                       "traceback", "output", "exit_code", "http_status", "recorded_at")

    def _finish_claimed(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> int:
        statement = (
            runs_table.update()
            .where(runs_table.c.job_id == sa.bindparam("b_job_id"),
                   runs_table.c.scheduled_at == sa.bindparam("b_scheduled_at"))
            .values({name: sa.bindparam(f"b_{name}") for name in self._FINISH_COLUMNS})
        )
        params = [{f"b_{k}": v for k, v in r.items() if k != "_claimed"} for r in rows]
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
    def try_acquire_lease(self, holder: str, host: str, pid: int, lease_seconds: float) -> bool:
        """Become the executing process if nobody holds a live lease. Compare-and-swap on the lease row, so two
        processes racing for an expired lease cannot both win."""
        now = time.time()
        table = leader_table
        try:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(table.c.holder, table.c.heartbeat_at)
                                   .where(table.c.name == LEASE_NAME)).first()
                if row is None:
                    conn.execute(table.insert().values(name=LEASE_NAME, holder=holder, host=host, pid=pid,
                                                       acquired_at=now, heartbeat_at=now))
                    return True
                if row.holder == holder:
                    return self._renew(conn, holder, now)
                if row.heartbeat_at >= now - lease_seconds:
                    return False
                result = conn.execute(
                    table.update()
                    .where(table.c.name == LEASE_NAME, table.c.holder == row.holder,
                           table.c.heartbeat_at == row.heartbeat_at)
                    .values(holder=holder, host=host, pid=pid, acquired_at=now, heartbeat_at=now)
                )
                return result.rowcount == 1
        except IntegrityError:
            return False

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

    def prune_runs(self, keep_per_job: int | None = None, max_age_seconds: float | None = None) -> int:
        """Delete history beyond the retention limits. Returns the number of rows deleted."""
        deleted = 0
        with self.engine.begin() as conn:
            if max_age_seconds is not None:
                cutoff = time.time() - max_age_seconds
                deleted += conn.execute(runs_table.delete().where(runs_table.c.recorded_at < cutoff)).rowcount
            if keep_per_job is not None:
                over = conn.execute(
                    sa.select(runs_table.c.job_id).group_by(runs_table.c.job_id)
                    .having(sa.func.count() > keep_per_job)
                ).scalars().all()
                for job_id in over:
                    # The id of the oldest row to keep; everything older goes.
                    boundary = conn.execute(
                        sa.select(runs_table.c.id).where(runs_table.c.job_id == job_id)
                        .order_by(runs_table.c.id.desc()).offset(keep_per_job - 1).limit(1)
                    ).scalar_one()
                    deleted += conn.execute(
                        runs_table.delete().where(runs_table.c.job_id == job_id, runs_table.c.id < boundary)
                    ).rowcount
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
