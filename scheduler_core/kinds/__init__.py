"""What a job does: python, shell and http kinds behind one `execute(spec)`.

APScheduler calls `execute` with the job's JobSpec as its only argument. A successful run returns a RunResult; a
failed one raises JobFailed carrying the same details, so APScheduler's own EVENT_JOB_EXECUTED / EVENT_JOB_ERROR
carry everything the history needs (timing, output tail, exit code or HTTP status).
"""

from __future__ import annotations

import traceback as _traceback
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..spec import JobSpec

OUTPUT_TAIL_CHARS = 4000
RETURN_VALUE_CHARS = 2000


@dataclass
class RunResult:
    started_at: datetime
    finished_at: datetime
    return_value: str | None = None  # repr, truncated to RETURN_VALUE_CHARS
    output: str | None = None  # stdout+stderr (shell) or response body (http) tail, OUTPUT_TAIL_CHARS at most
    exit_code: int | None = None  # shell
    http_status: int | None = None  # http

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class JobFailed(Exception):
    """A run that failed: non-zero exit, HTTP error status, exception in the python target, or timeout."""

    def __init__(self, message: str, result: RunResult, *, timed_out: bool = False, traceback: str | None = None):
        super().__init__(message)
        self.result = result
        self.timed_out = timed_out
        self.traceback = traceback  # the python target's own traceback, when it raised

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default pickling replays only args, which would lose result and fail on the required arg;
        # process pools and event queues pickle exceptions.
        return (_rebuild_job_failed, (str(self), self.result, self.timed_out, self.traceback))


def _rebuild_job_failed(message: str, result: RunResult, timed_out: bool, traceback: str | None) -> JobFailed:
    return JobFailed(message, result, timed_out=timed_out, traceback=traceback)


_current = threading.local()


def current_run() -> tuple[str, datetime] | None:
    """(job id, scheduled time) of the run going on in this thread, for jobs that want to know which run they are."""
    return getattr(_current, "run", None)


class running:
    """`with running(job_id, scheduled_at):` makes current_run() say so in this thread.

    A class, not @contextmanager: it wraps every run, and a generator-based one costs several times as much."""

    __slots__ = ("run",)

    def __init__(self, job_id: str, scheduled_at: datetime) -> None:
        self.run = (job_id, scheduled_at)

    def __enter__(self) -> None:
        _current.run = self.run

    def __exit__(self, *exc_info: object) -> None:
        _current.run = None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """The last `limit` characters of `text`."""
    return text[-limit:] if len(text) > limit else text


def execute(spec: JobSpec) -> RunResult:
    """Run `spec` once, in the calling thread. APScheduler's job function for every kind.

    Returns a RunResult with started_at/finished_at (aware UTC) and the kind's details. Any failure, including a
    timeout or a bug in carnation itself, is raised as JobFailed with the RunResult filled in as far as known.
    """
    started = utcnow()
    result = RunResult(started_at=started, finished_at=started)
    try:
        _KINDS[spec.kind].run(spec, result)
    except JobFailed as exc:
        exc.result.finished_at = utcnow()
        raise
    except Exception as exc:
        # A history row saying what broke beats an event with a bare exception the console cannot show.
        result.finished_at = utcnow()
        raise JobFailed(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            result,
            traceback="".join(_traceback.format_exception(exc)),
        ) from exc
    result.finished_at = utcnow()
    return result


def prepare(spec: JobSpec) -> None:
    """Checks for `spec` that need the outside world, done before a job is stored.

    python: resolves the target reference, raising UnresolvableReference with Flask-APScheduler's wording.
    shell, http: nothing beyond what JobSpec already validated.
    """
    if spec.kind == "python":
        python.resolve(spec.target)


# Imported after RunResult and JobFailed exist, because each kind imports them from here.
from . import http, python, shell  # noqa: E402

_KINDS = {"python": python, "shell": shell, "http": http}

__all__ = [
    "OUTPUT_TAIL_CHARS",
    "RETURN_VALUE_CHARS",
    "JobFailed",
    "RunResult",
    "current_run",
    "execute",
    "running",
    "prepare",
    "tail",
    "utcnow",
]
