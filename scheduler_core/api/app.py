"""The FastAPI app: Flask-APScheduler 1.13's API under /scheduler, run history, bearer tokens, OpenAPI.

Shapes, status codes and error sentences follow Flask-APScheduler (flask_apscheduler/api.py, utils.job_to_dict) so its
clients keep working; where it answers bad input with a 500 this answers 400 naming the field. Everything goes through
the Console facade except the scheduler-wide pause/resume/start/shutdown, which act on the engine's APScheduler.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, tzinfo
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.cron import CronTrigger
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..console import Console, JobView, RunView
from ..errors import ConflictingId, DatabaseUnavailable, FieldError, JobNotFound, NotLeader, SpecError
from ..spec import CronTriggerSpec, DateTriggerSpec, IntervalTriggerSpec, JobSpec
from ..store import OUTCOMES
from .auth import Authenticator

log = logging.getLogger(__name__)

PREFIX = "/scheduler"
MAX_BODY_BYTES = 1024 * 1024
# Flask-APScheduler's HTTPBasicAuth realm: its clients may compare the header.
BASIC_CHALLENGE = 'Basic realm="Authentication Required"'
BEARER_CHALLENGE = 'Bearer realm="Authentication Required", error="invalid_token"'


# --- errors -----------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """A response with {"error_message": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error_message": message}, status_code=status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """Outermost checks, as pure ASGI so nothing else sees a refused request: Host (DNS rebinding, when asked),
    Origin (a browser page must not drive the API with a user's cached Basic credentials), body size (413), and the
    catch-all turning any unexpected exception into {"error_message": "internal error"} with the traceback logged."""

    def __init__(self, app: ASGIApp, *, max_body: int, trusted_hosts: list[str] | None) -> None:
        self.app = app
        self.max_body = max_body
        self.trusted_hosts = {h.lower() for h in trusted_hosts} if trusted_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _error(413, f"body: larger than {self.max_body} bytes")(scope, receive, send)
        except Exception:
            log.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _error(500, "internal error")(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        host = headers.get("host", "")
        if self.trusted_hosts is not None and _host_name(host) not in self.trusted_hosts:
            return _error(400, f"Host: {host!r} is not a name of this server")
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
                return _error(403, "Origin: cross-origin requests are refused")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error(400, "Content-Length: not a number")
            if int(length) > self.max_body:
                return _error(413, f"body: larger than {self.max_body} bytes")
        return None


def _host_name(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# --- request bodies ------------------------------------------------------------------------------------------------
_MISSING: Any = object()


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def json_body(request: Request) -> Any:
    """The request body as JSON, whatever its Content-Type (Flask-APScheduler reads it with force=True, and clients
    such as `curl -d` send form types). _MISSING when empty."""
    raw = await request.body()
    if not raw.strip():
        return _MISSING
    try:
        data = json.loads(raw, parse_float=_finite, parse_constant=_no_constants)
    except RecursionError:
        raise ApiError(400, "body: nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})") from None
    _check_text(data, "")
    return data


def _check_text(value: Any, path: str) -> None:
    """Refuse strings no database can store: lone surrogates ("\\ud800" escapes) fail to encode anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"{path or 'body'}: contains an invalid unicode escape") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path or "body")
            _check_text(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{path}[{index}]")


def _job_object(body: Any, what: str) -> dict[str, Any]:
    if body is _MISSING:
        raise ApiError(400, f"body: {what} (a JSON object) is required")
    if not isinstance(body, dict):
        raise ApiError(400, f"body: {what} must be a JSON object")
    job_id = body.get("id")
    if isinstance(job_id, str) and any(ord(c) < 32 or ord(c) == 127 for c in job_id):
        raise SpecError(FieldError("id", "must not contain control characters"))
    return body


def _check_path_id(job_id: str) -> None:
    # No stored id can contain these; PostgreSQL would refuse a NUL in the query itself.
    if len(job_id) > 191 or any(ord(c) < 32 or ord(c) == 127 for c in job_id):
        raise JobNotFound(job_id)


# --- models (the OpenAPI document; the Flask-APScheduler shapes themselves are built by hand below) ---------------
class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


_Opt = SkipJsonSchema[None]  # optional, yet not nullable in the documented schema
CronValue = str | int


class JobIn(_Doc):
    """A job in Flask-APScheduler's flat shape (`"trigger": "cron", "hour": "*"`), with carnation's kinds. Our nested
    shape (`"trigger": {"type": "cron", ...}`, `target` for `func`) is accepted too."""

    id: str = Field(min_length=1, max_length=191)
    func: str | _Opt = Field(None, description="python: 'module:function'; shell: a command line; http: the URL")
    target: str | _Opt = Field(None, description="carnation's name for func (give one of them)")
    name: str | _Opt = None
    kind: Literal["python", "shell", "http"] | _Opt = None
    args: list[JsonValue] | _Opt = None
    kwargs: dict[str, JsonValue] | _Opt = None
    trigger: Literal["date", "interval", "cron"] | dict[str, JsonValue] | _Opt = Field(None, description="default: date")
    run_date: datetime | _Opt = Field(None, description="date: when (default: now)")
    weeks: int | _Opt = Field(None, ge=0)
    days: int | _Opt = Field(None, ge=0)
    hours: int | _Opt = Field(None, ge=0)
    minutes: int | _Opt = Field(None, ge=0)
    seconds: int | _Opt = Field(None, ge=0, description="interval: 1 second when no unit is given")
    expression: str | _Opt = Field(None, description="cron: a crontab line instead of the fields")
    year: CronValue | _Opt = None
    month: CronValue | _Opt = None
    week: CronValue | _Opt = None
    day: CronValue | _Opt = None
    day_of_week: CronValue | _Opt = None
    hour: CronValue | _Opt = None
    minute: CronValue | _Opt = None
    second: CronValue | _Opt = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    timezone: str | _Opt = None
    jitter: int | _Opt = Field(None, ge=0)
    misfire_grace_time: int | _Opt = Field(None, ge=1)
    coalesce: bool | _Opt = None
    max_instances: int | _Opt = Field(None, ge=1, le=1000)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] | _Opt = None
    headers: dict[str, str] | _Opt = None
    body: str | None = None
    timeout: float | _Opt = Field(None, gt=0)
    paused: bool | _Opt = None
    description: str | _Opt = None
    tags: list[str] | _Opt = None
    next_run_time: datetime | None = Field(None, description="ignored (accepted so GET output can be posted back)")


class JobChanges(JobIn):
    """Fields to change (PATCH). Trigger fields without `trigger` change the current trigger."""

    id: str | _Opt = None  # type: ignore[assignment]


class ShutdownIn(_Doc):
    wait: bool = Field(True, description="wait for running jobs to finish (up to shutdown_timeout)")


class JobOut(BaseModel):
    """Flask-APScheduler's job_to_dict: trigger fields appear only for the job's trigger type."""

    id: str
    name: str
    func: str
    args: list[JsonValue]
    kwargs: dict[str, JsonValue]
    trigger: Literal["date", "interval", "cron"]
    run_date: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    weeks: int | None = None
    days: int | None = None
    hours: int | None = None
    minutes: int | None = None
    seconds: int | None = None
    expression: str | None = None
    year: str | None = None
    month: str | None = None
    week: str | None = None
    day: str | None = None
    day_of_week: str | None = None
    hour: str | None = None
    minute: str | None = None
    second: str | None = None
    misfire_grace_time: int
    max_instances: int
    next_run_time: datetime | None = Field(description="null while paused")
    kind: Literal["python", "shell", "http"]
    method: str | None = None
    headers: dict[str, str] | None = None
    body: str | None = None
    timeout: float | None = None
    timezone: str | None = None
    jitter: int | None = None
    coalesce: bool | None = None
    description: str | None = None
    tags: list[str] | None = None


class SchedulerInfo(BaseModel):
    current_host: str
    allowed_hosts: list[str]
    running: bool


class ErrorOut(BaseModel):
    error_message: str


class RunOut(BaseModel):
    id: int | None
    job_id: str
    outcome: str
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    host: str
    pid: int
    return_value: str | None
    exception: str | None
    traceback: str | None
    output: str | None
    exit_code: int | None
    http_status: int | None


class RunPage(BaseModel):
    items: list[RunOut]
    page: int
    per_page: int
    total: int
    pages: int
    next: str | None = Field(description="URL of the next page, or null")
    prev: str | None = Field(description="URL of the previous page, or null")


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds")


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "bad input (the message names the field)", 401: "missing or invalid credentials",
            403: "cross-origin request", 404: "no such job", 409: "conflict with the job's or scheduler's state",
            413: "body larger than 1 MiB", 503: "database unavailable"}
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


# --- Flask-APScheduler's job dict -----------------------------------------------------------------------------------
def _iso(value: datetime | None, tz: tzinfo) -> str | None:
    """APScheduler's convert_to_datetime, then isoformat: naive values are in the job's zone, aware ones keep theirs."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=tz)).isoformat()


@functools.lru_cache(maxsize=4096)
def _cron_fields(trig: CronTriggerSpec, zone: str) -> tuple[tuple[str, str], ...]:
    # What Flask-APScheduler prints: str() of each non-default field of the real CronTrigger, in APScheduler's order.
    trigger = CronTrigger(**trig.fields(), timezone=zone)
    return tuple((f.name, str(f)) for f in trigger.fields if not f.is_default)


def job_to_dict(view: JobView, spec: JobSpec, default_timezone: str, default_misfire: int) -> dict[str, Any]:
    """utils.job_to_dict + trigger_to_dict of Flask-APScheduler 1.13, key for key and in its order; then carnation's
    own fields (kind, http details, …), all accepted back by POST so a GET result can be re-posted."""
    zone_name = spec.timezone or default_timezone
    tz = ZoneInfo(zone_name)
    out: dict[str, Any] = {
        "id": spec.id, "name": spec.display_name, "func": spec.target, "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
    }
    trig = spec.trigger
    if isinstance(trig, DateTriggerSpec):
        out["trigger"] = "date"
        # Without run_date a date job fires when added (or resumed): that moment is its next run time.
        if trig.run_date:
            out["run_date"] = _iso(trig.run_date, tz)
        else:
            out["run_date"] = view.next_run_time.astimezone(tz).isoformat() if view.next_run_time else None
    elif isinstance(trig, IntervalTriggerSpec):
        out["trigger"] = "interval"
        # APScheduler invents start_date (creation time + interval) when none is given; carnation rebuilds triggers
        # on every load, so that value would move: report the one given, or null.
        out["start_date"] = _iso(spec.start_date, tz)
        if spec.end_date:
            out["end_date"] = _iso(spec.end_date, tz)
        weeks, days = divmod(trig.total_seconds() // 86400, 7)
        minutes, seconds = divmod(trig.total_seconds() % 86400, 60)
        hours, minutes = divmod(minutes, 60)
        for unit, amount in (("weeks", weeks), ("days", days), ("hours", hours), ("minutes", minutes),
                             ("seconds", seconds)):
            if amount > 0:
                out[unit] = amount
    else:
        assert isinstance(trig, CronTriggerSpec)
        out["trigger"] = "cron"
        if spec.start_date:
            out["start_date"] = _iso(spec.start_date, tz)
        if spec.end_date:
            out["end_date"] = _iso(spec.end_date, tz)
        if trig.expression is not None:
            out["expression"] = trig.expression
        else:
            try:
                out.update(_cron_fields(trig, zone_name))
            except ValueError:
                out.update(trig.fields())
    out["misfire_grace_time"] = spec.misfire_grace_time or default_misfire
    out["max_instances"] = spec.max_instances
    out["next_run_time"] = view.next_run_time.astimezone(tz).isoformat() if view.next_run_time else None
    out["kind"] = spec.kind
    if spec.kind == "http":
        out.update(method=spec.method, headers=dict(spec.headers), body=spec.body)
    for name in ("timeout", "timezone", "jitter", "coalesce"):
        if getattr(spec, name) is not None:
            out[name] = getattr(spec, name)
    if spec.description:
        out["description"] = spec.description
    if spec.tags:
        out["tags"] = list(spec.tags)
    return out


def run_to_dict(run: RunView, tz: tzinfo) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.astimezone(tz).isoformat() if value else None

    return {
        "id": run.id, "job_id": run.job_id, "outcome": run.outcome, "scheduled_at": iso(run.scheduled_at),
        "started_at": iso(run.started_at), "finished_at": iso(run.finished_at), "duration": run.duration,
        "host": run.host, "pid": run.pid, "return_value": run.return_value, "exception": run.exception,
        "traceback": run.traceback, "output": run.output, "exit_code": run.exit_code, "http_status": run.http_status,
    }


# --- scheduler-wide state -------------------------------------------------------------------------------------------
class SchedulerControl:
    """Flask-APScheduler's /pause, /resume, /start, /shutdown over the engine's APScheduler.

    The API runs inside the scheduler's own process, so a real APScheduler shutdown would leave an engine that can
    neither execute nor restart (its executor and job store would be closed). "shutdown" therefore stops executing
    — no new runs, running ones awaited if `wait` — and the server keeps answering; GET /scheduler then reports
    running: false and /start brings execution back. The process keeps the executor lease meanwhile, so no standby
    process takes over: shut down means no job runs. Stopping the process is the service manager's job (SIGTERM)."""

    def __init__(self, console: Console, settings: Settings) -> None:
        self.engine = console.engine
        self.settings = settings
        self.shut_down = False
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        # APScheduler counts a paused scheduler as running; so does Flask-APScheduler's GET /scheduler.
        scheduler = self.engine.scheduler
        if not (self.engine.executing and scheduler.running):
            return False
        if self.shut_down and scheduler.state == STATE_RUNNING:
            self.shut_down = False  # the engine resumed it: it lost the executor lease and took it back since
        return not self.shut_down

    def pause(self) -> None:
        with self._lock:
            self._require_running()
            self.engine.scheduler.pause()

    def resume(self) -> None:
        with self._lock:
            self._require_running()
            self.engine.scheduler.resume()

    def start(self) -> None:
        with self._lock:
            if not self.engine.executing:
                self.shut_down = False
                raise ApiError(409, self._why_not_executing())
            if self.shut_down:
                self.engine.scheduler.resume()
                self.shut_down = False
                return
            raise ApiError(400, "Scheduler is already running")

    def shutdown(self, wait: bool) -> None:
        with self._lock:
            self._require_running()
            self.engine.scheduler.pause()
            self.shut_down = True
        if wait:
            deadline = time.monotonic() + self.settings.shutdown_timeout
            while self.engine.running_count() and time.monotonic() < deadline:
                time.sleep(0.05)

    def _require_running(self) -> None:
        if not self.running:
            # APScheduler's SchedulerNotRunningError sentence.
            raise ApiError(400, "Scheduler is not running")

    def _why_not_executing(self) -> str:
        engine = self.engine
        if not engine.may_execute:
            return (f"this process cannot run the scheduler: host {engine.host} is not in allowed_hosts "
                    f"({', '.join(self.settings.allowed_hosts)})")
        if engine.wants_to_execute:
            return "this process is standing by: another process holds the executor lease and executes jobs"
        return "this process only serves the console; it does not execute jobs"


# --- the app --------------------------------------------------------------------------------------------------------
class _BasicDoc(HTTPBasic):
    """Declares HTTP Basic in the OpenAPI document; the header itself is parsed by `Auth` (UTF-8 passwords, and
    FastAPI's own class answers a malformed header without Flask-APScheduler's challenge)."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


class _BearerDoc(HTTPBearer):
    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


_BASIC_DOC = _BasicDoc(scheme_name="basicAuth", auto_error=False)
_BEARER_DOC = _BearerDoc(scheme_name="bearerAuth", auto_error=False)


class Auth:
    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def require_user(
        self, request: Request, _basic: None = Security(_BASIC_DOC),
        _bearer: None = Security(_BEARER_DOC),
    ) -> str:
        """Basic credentials or a bearer token; 401 with a challenge otherwise. Sync: argon2 runs in the pool."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            user = self.authenticator.verify_token(credentials.strip())
            if user is None:
                _log_refusal(request, "an invalid or expired bearer token")
                raise ApiError(401, "invalid or expired token", {"WWW-Authenticate": BEARER_CHALLENGE})
        else:
            user = self._basic(request, scheme, credentials)
        request.state.user = user
        return user

    def require_password(
        self, request: Request, _basic: None = Security(_BASIC_DOC),
    ) -> str:
        """Basic credentials only: a token must not buy a fresh token forever."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        user = self._basic(request, scheme.lower(), credentials)
        request.state.user = user
        return user

    def _basic(self, request: Request, scheme: str, credentials: str) -> str:
        if scheme != "basic":
            raise ApiError(401, "authentication required: HTTP Basic credentials or a bearer token",
                           {"WWW-Authenticate": BASIC_CHALLENGE})
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            text = decoded.decode("latin-1")
        username, colon, password = text.partition(":")
        user = self.authenticator.verify_password(username, password) if colon else None
        if user is None:
            _log_refusal(request, f"a wrong password or unknown user name {username[:150]!r}")
            raise ApiError(401, "invalid user name or password", {"WWW-Authenticate": BASIC_CHALLENGE})
        return user


def _log_refusal(request: Request, what: str) -> None:
    # One line per refused credential, with the peer address: what an operator (or fail2ban) needs to spot guessing.
    client = request.client.host if request.client else "?"
    log.warning("HTTP API: refused %s from %s (%s %s)", what, client, request.method, request.url.path)


def create_app(
    console: Console,
    settings: Settings,
    *,
    auth_required: bool = True,
    authenticator: Authenticator | None = None,
    trusted_hosts: list[str] | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API over `console`. With auth_required every route but /openapi.json needs a user (HTTP Basic or a bearer
    token from POST /auth/token). `trusted_hosts` restricts the Host header (set it when serving without auth)."""
    app = FastAPI(
        title="carnation",
        version="1.0",
        description="Flask-APScheduler-compatible scheduler API, plus run history.",
        docs_url=None,
        redoc_url=None,
    )
    control = SchedulerControl(console, settings)
    app.state.console = console
    app.state.control = control
    default_tz = settings.timezone
    history_tz = ZoneInfo(settings.timezone)

    def as_job(view: JobView) -> dict[str, Any]:
        if view.spec is None:
            raise ApiError(409, f"Job {view.id} is broken: {view.broken}")
        return job_to_dict(view, view.spec, default_tz, settings.misfire_grace_time)

    dependencies: list[Any] = []
    auth: Auth | None = None
    if auth_required:
        auth = Auth(authenticator or Authenticator(console.engine.store))
        dependencies = [Depends(auth.require_user)]
    router = APIRouter(prefix=PREFIX, dependencies=dependencies)
    auth_codes = (401,) if auth_required else ()

    # --- scheduler ---
    @router.get("", response_model=SchedulerInfo, responses=_responses(*auth_codes))
    def get_scheduler_info() -> Any:
        return JSONResponse({"current_host": console.engine.host.lower(),
                             "allowed_hosts": list(settings.allowed_hosts), "running": control.running})

    @router.post("/pause", status_code=204, response_class=Response, responses=_responses(400, *auth_codes))
    def pause_scheduler() -> Response:
        control.pause()
        return Response(status_code=204)

    @router.post("/resume", status_code=204, response_class=Response, responses=_responses(400, *auth_codes))
    def resume_scheduler() -> Response:
        control.resume()
        return Response(status_code=204)

    @router.post("/start", status_code=204, response_class=Response, responses=_responses(400, 409, *auth_codes))
    def start_scheduler() -> Response:
        control.start()
        return Response(status_code=204)

    @router.post(
        "/shutdown", status_code=204, response_class=Response, responses=_responses(400, 413, *auth_codes),
        openapi_extra=_body_doc("ShutdownIn", required=False),
    )
    def shutdown_scheduler(body: Any = Depends(json_body)) -> Response:
        wait = True
        if body is not _MISSING:
            if not isinstance(body, dict):
                raise ApiError(400, "body: must be a JSON object such as {\"wait\": false}")
            unknown = sorted(set(body) - {"wait"})
            if unknown:
                raise ApiError(400, f"{unknown[0]}: unknown field")
            wait = body.get("wait", True)
            if not isinstance(wait, bool):
                raise ApiError(400, "wait: must be true or false")
        control.shutdown(wait)
        return Response(status_code=204)

    # --- jobs ---
    @router.get("/jobs", response_model=list[JobOut], responses=_responses(*auth_codes, 503))
    def get_jobs() -> Any:
        return JSONResponse([as_job(v) for v in console.list_jobs() if v.spec is not None])

    @router.post(
        "/jobs", response_model=JobOut, responses=_responses(400, 409, 413, *auth_codes, 503),
        openapi_extra=_body_doc("JobIn"),
    )
    def add_job(body: Any = Depends(json_body)) -> Any:
        return JSONResponse(as_job(console.add_job(_job_object(body, "a job"))))

    @router.get("/jobs/{job_id}", response_model=JobOut, responses=_responses(404, 409, *auth_codes, 503))
    def get_job(job_id: str) -> Any:
        _check_path_id(job_id)
        return JSONResponse(as_job(console.get_job(job_id)))

    @router.patch(
        "/jobs/{job_id}", response_model=JobOut, responses=_responses(400, 404, 413, *auth_codes, 503),
        openapi_extra=_body_doc("JobChanges"),
    )
    def update_job(job_id: str, body: Any = Depends(json_body)) -> Any:
        _check_path_id(job_id)
        changes = _job_object(body, "the fields to change")
        if "next_run_time" in changes:
            raise SpecError(FieldError("next_run_time", "cannot be set; pause, resume or run the job instead"))
        return JSONResponse(as_job(console.update_job(job_id, changes)))

    @router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
                   responses=_responses(404, *auth_codes, 503))
    def delete_job(job_id: str) -> Response:
        _check_path_id(job_id)
        console.remove_job(job_id)
        return Response(status_code=204)

    @router.post("/jobs/{job_id}/pause", response_model=JobOut, responses=_responses(400, 404, *auth_codes, 503))
    def pause_job(job_id: str) -> Any:
        _check_path_id(job_id)
        return JSONResponse(as_job(console.pause_job(job_id)))

    @router.post("/jobs/{job_id}/resume", response_model=JobOut, responses=_responses(400, 404, *auth_codes, 503))
    def resume_job(job_id: str) -> Any:
        _check_path_id(job_id)
        return JSONResponse(as_job(console.resume_job(job_id)))

    @router.post("/jobs/{job_id}/run", response_model=JobOut,
                 responses=_responses(400, 404, 409, *auth_codes, 503))
    def run_job(job_id: str) -> Any:
        _check_path_id(job_id)
        console.run_job(job_id)
        return JSONResponse(as_job(console.get_job(job_id)))

    # --- history ---
    def page_of(request: Request, job_id: str | None, page: int, per_page: int, outcome: str | None) -> dict[str, Any]:
        result = console.history(job_id, page=page, per_page=per_page, outcome=outcome)

        def url(number: int) -> str:
            return str(request.url.include_query_params(page=number, per_page=per_page))

        return {
            "items": [run_to_dict(r, history_tz) for r in result.items], "page": result.page,
            "per_page": result.per_page, "total": result.total, "pages": result.pages,
            "next": url(result.page + 1) if result.has_next else None,
            "prev": url(min(result.page - 1, result.pages)) if result.has_prev else None,
        }

    page_q = Query(1, ge=1, le=1_000_000_000, description="page number, from 1")
    per_page_q = Query(20, ge=1, le=1000, description="runs per page")
    outcome_q = Query(None, description="only runs with this outcome")

    @router.get("/history", response_model=RunPage, responses=_responses(400, *auth_codes, 503))
    def get_history(request: Request, page: int = page_q, per_page: int = per_page_q,
                    outcome: Literal[OUTCOMES] | None = outcome_q) -> Any:  # type: ignore[valid-type]
        return JSONResponse(page_of(request, None, page, per_page, outcome))

    @router.get("/jobs/{job_id}/history", response_model=RunPage, responses=_responses(400, 404, *auth_codes, 503))
    def get_job_history(request: Request, job_id: str, page: int = page_q, per_page: int = per_page_q,
                        outcome: Literal[OUTCOMES] | None = outcome_q) -> Any:  # type: ignore[valid-type]
        _check_path_id(job_id)
        result = page_of(request, job_id, page, per_page, outcome)
        if result["total"] == 0:
            console.get_job(job_id)  # 404 unless the job exists (a removed job's runs stay readable)
        return JSONResponse(result)

    app.include_router(router)

    if auth is not None:
        token_auth = auth

        @app.post("/auth/token", response_model=TokenOut, responses=_responses(401))
        def issue_token(user: str = Depends(token_auth.require_password)) -> Any:
            """A bearer token for `Authorization: Bearer …`, from HTTP Basic credentials. It expires after
            `expires_in` seconds, when the user's password changes, and when the server restarts."""
            return JSONResponse({"access_token": token_auth.authenticator.issue_token(user), "token_type": "bearer",
                                 "expires_in": token_auth.authenticator.token_ttl})

    _install_error_handlers(app)
    app.add_middleware(_Guard, max_body=max_body, trusted_hosts=trusted_hosts)
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    return app


# --- error mapping --------------------------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    def handler(status: int, message: Callable[[Any], str]) -> Callable[[Request, Any], Awaitable[JSONResponse]]:
        async def handle(_request: Request, exc: Any) -> JSONResponse:
            return _error(status, message(exc))

        return handle

    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable answering %s %s: %s", request.method, request.url.path, exc)
        return _error(503, "database unavailable; try again later")

    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)

    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid"}
        field = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
        return _error(400, f"{field}: {first['msg']}")

    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(SpecError, handler(400, str))
    app.add_exception_handler(JobNotFound, handler(404, lambda e: f"Job {e.job_id} not found"))
    # Flask-APScheduler's sentence (api.add_job), not APScheduler's ConflictingIdError one.
    app.add_exception_handler(ConflictingId, handler(409, lambda e: f"Job {e.job_id} already exists."))
    # A huge interval or an extreme date passes JobSpec validation but overflows datetime once the trigger computes
    # a fire time (before anything is stored): bad input, not a server fault.
    app.add_exception_handler(OverflowError, handler(
        400, lambda e: "trigger: a date or interval is out of range (fire times must fall in years 1 to 9999)"))
    app.add_exception_handler(MaxInstancesReachedError, handler(409, str))
    app.add_exception_handler(NotLeader, handler(409, str))
    app.add_exception_handler(DatabaseUnavailable, database_down)
    app.add_exception_handler(OperationalError, database_down)
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]


# --- OpenAPI ----------------------------------------------------------------------------------------------------------
_BODY_MODELS: dict[str, type[BaseModel]] = {"JobIn": JobIn, "JobChanges": JobChanges, "ShutdownIn": ShutdownIn}


def _body_doc(model: str, required: bool = True) -> dict[str, Any]:
    # Bodies are parsed by json_body (any Content-Type, as Flask-APScheduler); documented here, defined in _openapi.
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path in schema.get("paths", {}).values():
        for method, operation in path.items():
            # Input errors are 400 here, as in Flask-APScheduler; FastAPI's default 422 never happens.
            operation.get("responses", {}).pop("422", None)
            if method != "get":
                operation["responses"]["403"] = {
                    "description": "cross-origin request",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    for name, model in _BODY_MODELS.items():
        body_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body_schema.pop("$defs", {}))
        components[name] = body_schema
    app.openapi_schema = schema
    return schema


__all__ = ["ApiError", "JobOut", "RunPage", "SchedulerControl", "create_app", "job_to_dict", "run_to_dict"]
