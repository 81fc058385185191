"""Job specs: plain, validated data. What a job is, never how APScheduler holds it.

A JobSpec is what the store keeps (as JSON), what the TUI form edits, what the API and config files speak. Every
invalid input becomes a SpecError naming the field and the reason. `build_trigger` is the one place a spec turns into
the APScheduler trigger that actually fires.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from functools import cache, lru_cache
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from . import cron
from .errors import FieldError, SpecError, quoted

JobKind = Literal["python", "shell", "http"]
JOB_KINDS: tuple[str, ...] = ("python", "shell", "http")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
INTERVAL_UNITS = ("weeks", "days", "hours", "minutes", "seconds")
MAX_INTERVAL_SECONDS = 100 * 366 * 86400


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _share_fields_set(self) -> _Model:
        # A spec loaded from its row has every field set, and pydantic keeps the names in a set of its own per
        # instance: 2.3 KB for a JobSpec and 0.7 KB for its trigger, 60 % of what a loaded job costs in memory. Frozen
        # models never add to it (copies copy it first), so one set per class serves them all.
        if len(self.__pydantic_fields_set__) == len(type(self).model_fields):
            object.__setattr__(self, "__pydantic_fields_set__", _every_field(type(self)))
        return self


@cache
def _every_field(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


class DateTriggerSpec(_Model):
    """Runs once, at run_date (now when left out)."""

    type: Literal["date"] = "date"
    run_date: datetime | None = None


class IntervalTriggerSpec(_Model):
    """Runs every weeks+days+hours+minutes+seconds; 1 second when no unit is given, as Flask-APScheduler does."""

    type: Literal["interval"] = "interval"
    weeks: int = Field(0, ge=0)
    days: int = Field(0, ge=0)
    hours: int = Field(0, ge=0)
    minutes: int = Field(0, ge=0)
    seconds: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_one_second(cls, data: Any) -> Any:
        if isinstance(data, dict) and not any(unit in data for unit in INTERVAL_UNITS):
            return {**data, "seconds": 1}
        return data

    @model_validator(mode="after")
    def _positive(self) -> IntervalTriggerSpec:
        if self.total_seconds() <= 0:
            raise SpecError(FieldError("seconds", "the interval must be longer than zero"))
        if self.total_seconds() > MAX_INTERVAL_SECONDS:
            # Beyond this, fire-time arithmetic overflows datetime.
            raise SpecError(FieldError("seconds", "the interval must be at most 100 years"))
        return self

    def total_seconds(self) -> int:
        return (((self.weeks * 7 + self.days) * 24 + self.hours) * 60 + self.minutes) * 60 + self.seconds


class CronTriggerSpec(_Model):
    """Either a crontab `expression` (5 fields, or 6 with seconds first) or APScheduler's cron fields."""

    type: Literal["cron"] = "cron"
    expression: str | None = None
    year: str | None = None
    month: str | None = None
    week: str | None = None
    day: str | None = None
    day_of_week: str | None = None
    hour: str | None = None
    minute: str | None = None
    second: str | None = None

    @field_validator(*cron.CRON_FIELDS, mode="before")
    @classmethod
    def _int_to_str(cls, value: Any) -> Any:
        # APScheduler takes ints or strings; store one form so specs compare equal.
        if isinstance(value, bool):
            raise ValueError("must be a cron expression string or a whole number")
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _check(self) -> CronTriggerSpec:
        errors: list[FieldError] = []
        fields = self.fields()
        if self.expression is not None:
            if fields:
                errors.append(FieldError("expression", "give either a crontab expression or cron fields, not both"))
            else:
                errors.extend(cron.check_expression(self.expression))
        elif not fields:
            errors.append(FieldError("expression", "a cron trigger needs an expression or at least one cron field"))
        for name, value in fields.items():
            reason = cron.check_field(name, value)
            if reason:
                errors.append(FieldError(name, reason))
        if errors:
            raise SpecError(errors)
        return self

    def fields(self) -> dict[str, str]:
        """The APScheduler cron fields that were given."""
        return {name: getattr(self, name) for name in cron.CRON_FIELDS if getattr(self, name) is not None}


TriggerSpec = Annotated[
    Union[DateTriggerSpec, IntervalTriggerSpec, CronTriggerSpec], Field(discriminator="type")
]


def _check_timezone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long to be a file name
        raise ValueError(f"unknown timezone {quoted(value)}") from None
    return value


class JobSpec(_Model):
    """One job, as the user defined it."""

    id: str = Field(min_length=1, max_length=191, pattern=r"^[^\s\x00-\x1f\x7f/?#]+$")
    name: str | None = Field(None, max_length=200)
    kind: JobKind = "python"
    # python: "module:func"; shell: a command line; http: the URL.
    target: str = Field(min_length=1, max_length=4000)
    args: list[JsonValue] = Field(default_factory=list)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    # http only
    method: str = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    # seconds a run may take before it is stopped (shell, http) or abandoned (python) and recorded as a timeout
    timeout: float | None = Field(None, gt=0)
    trigger: TriggerSpec = Field(default_factory=DateTriggerSpec)
    timezone: str | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    jitter: int | None = Field(None, ge=0)
    misfire_grace_time: int | None = Field(None, gt=0)
    coalesce: bool | None = None
    max_instances: int = Field(1, ge=1, le=1000)
    paused: bool = False
    description: str = Field("", max_length=2000)
    tags: list[str] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return _check_timezone(value)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        method = value.upper()
        if method not in HTTP_METHODS:
            raise ValueError(f"must be one of {', '.join(HTTP_METHODS)}")
        return method

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        errors: list[FieldError] = []
        if self.start_date and self.end_date and _comparable(self.end_date) < _comparable(self.start_date):
            errors.append(FieldError("end_date", "is before start_date"))
        if self.kind == "python" and ":" not in self.target:
            errors.append(FieldError("target", "a python job's target is a 'module:function' reference"))
        if self.kind == "http" and not self.target.startswith(("http://", "https://")):
            errors.append(FieldError("target", "an http job's target is an http:// or https:// URL"))
        if self.kind != "http" and (self.body is not None or self.headers or self.method != "GET"):
            errors.append(FieldError("method", "method, headers and body are for http jobs only"))
        if errors:
            raise SpecError(errors)
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """A stored spec. pydantic's own JSON parser: loading 100,000 rows is a hot path."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise SpecError(_errors_of(exc)) from None


def _comparable(value: datetime) -> float:
    return value.timestamp() if value.tzinfo else value.replace(tzinfo=ZoneInfo("UTC")).timestamp()


def _field_name(loc: tuple[Any, ...]) -> str:
    # Drop the union tag pydantic puts in discriminated-union paths: ("trigger", "cron", "hour") -> "trigger.hour".
    parts = [str(p) for p in loc if p not in ("date", "interval", "cron") or loc.index(p) != 1]
    return ".".join(parts) or "spec"


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "is required",
    "string_too_short": "is required",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
}


def _errors_of(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    errors: list[FieldError] = []
    for err in exc.errors():
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, SpecError):
            base = _field_name(err["loc"][:-1] if err["loc"] and err["loc"][-1] in ("date", "interval", "cron") else err["loc"])
            for inner in ctx_error.errors:
                name = f"{base}.{inner.field}" if base and base != "spec" else inner.field
                errors.append(FieldError(prefix + name, inner.reason))
            continue
        message = _FRIENDLY.get(err["type"], err["msg"].removeprefix("Value error, "))
        if err["type"] == "string_pattern_mismatch" and err["loc"] == ("id",):
            message = "may not contain spaces, control characters, /, ? or #"
        errors.append(FieldError(prefix + _field_name(err["loc"]), message))
    return errors


def parse_spec(data: Any) -> JobSpec:
    """Validate a spec from plain data (a dict, as JSON decodes it). Raises SpecError naming every bad field."""
    if isinstance(data, JobSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError("a job spec must be a JSON object")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_errors_of(exc)) from None
    except SpecError:
        raise


def replace(spec: JobSpec, **changes: Any) -> JobSpec:
    """A copy of `spec` with `changes`, validated as a whole."""
    return parse_spec({**spec.model_dump(mode="json", exclude_unset=False), **changes})


def resolve_timezone(spec: JobSpec, default: tzinfo | str) -> tzinfo:
    zone = spec.timezone or default
    return ZoneInfo(zone) if isinstance(zone, str) else zone


def build_trigger(spec: JobSpec, default_timezone: tzinfo | str = "UTC") -> BaseTrigger:
    """The APScheduler trigger that fires `spec`: the single truth for next-run times and previews."""
    tz = resolve_timezone(spec, default_timezone)
    trig = spec.trigger
    try:
        if isinstance(trig, DateTriggerSpec):
            return DateTrigger(run_date=trig.run_date or datetime.now(tz), timezone=tz)
        if isinstance(trig, IntervalTriggerSpec):
            return IntervalTrigger(
                weeks=trig.weeks, days=trig.days, hours=trig.hours, minutes=trig.minutes, seconds=trig.seconds,
                start_date=spec.start_date, end_date=spec.end_date, timezone=tz, jitter=spec.jitter,
            )
        return _cron_trigger(trig, tz, spec.start_date, spec.end_date, spec.jitter)
    except (ValueError, TypeError) as exc:
        raise SpecError(str(exc), field="trigger") from None


@lru_cache(maxsize=4096)
def _cron_trigger(trig: CronTriggerSpec, tz: tzinfo, start_date: datetime | None, end_date: datetime | None,
                  jitter: int | None) -> BaseTrigger:
    """Jobs on the same cron schedule share one trigger: a CronTrigger takes ~90 µs to build and 2.4 KB to keep,
    9 s and 240 MB at 100,000 jobs, and nothing changes one once built (its fire times depend on its arguments
    alone, unlike a date or interval trigger built without a start, which starts from now)."""
    if trig.expression is not None:
        return cron.expression_trigger(trig.expression, timezone=tz, start_date=start_date, end_date=end_date,
                                       jitter=jitter)
    return CronTrigger(**trig.fields(), start_date=start_date, end_date=end_date, timezone=tz, jitter=jitter)


# --- Flask-APScheduler's flat job shape: {"id", "func", "trigger": "cron", "hour": "*", "args": [...]} ---------

_FLAT_TRIGGER_FIELDS = {
    "date": ("run_date",),
    "interval": INTERVAL_UNITS,
    "cron": ("expression",) + cron.CRON_FIELDS,
}
_SPEC_FIELDS = set(JobSpec.model_fields) - {"trigger"}


def from_flat(data: Any) -> JobSpec:
    """A JobSpec from Flask-APScheduler's job dict (as its POST /scheduler/jobs and JOBS config take)."""
    if not isinstance(data, dict):
        raise SpecError("a job must be a JSON object")
    data = dict(data)
    if "func" in data:
        if "target" in data:
            raise SpecError(FieldError("func", "give either func or target, not both"))
        data["target"] = data.pop("func")
    # Flask-APScheduler ignores these when adding; accept them so its GET output can be posted back.
    data.pop("next_run_time", None)
    trigger = data.pop("trigger", "date")
    if isinstance(trigger, dict):
        return parse_spec({**data, "trigger": trigger})
    if not isinstance(trigger, str) or trigger not in _FLAT_TRIGGER_FIELDS:
        raise SpecError(FieldError("trigger", f"unknown trigger {quoted(trigger)}; use date, interval or cron"))
    trigger_data: dict[str, Any] = {"type": trigger}
    for name in _FLAT_TRIGGER_FIELDS[trigger]:
        if name in data:
            trigger_data[name] = data.pop(name)
    try:
        return JobSpec.model_validate({**data, "trigger": trigger_data})
    except ValidationError as exc:
        errors = _errors_of(exc)
        # Name fields as the user typed them: flat "hour", not "trigger.hour".
        raise SpecError([FieldError(e.field.removeprefix("trigger."), e.reason) for e in errors]) from None


def to_flat(spec: JobSpec) -> dict[str, Any]:
    """Flask-APScheduler's job dict for `spec` (without next_run_time, which is state, not spec)."""
    out: dict[str, Any] = {
        "id": spec.id,
        "name": spec.display_name,
        "func": spec.target,
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
        "trigger": spec.trigger.type,
    }
    trig = spec.trigger
    if isinstance(trig, DateTriggerSpec):
        if trig.run_date:
            out["run_date"] = trig.run_date.isoformat()
    elif isinstance(trig, IntervalTriggerSpec):
        out.update({u: getattr(trig, u) for u in INTERVAL_UNITS if getattr(trig, u)})
    else:
        if trig.expression is not None:
            out["expression"] = trig.expression
        out.update(trig.fields())
    for name in ("start_date", "end_date"):
        if getattr(spec, name):
            out[name] = getattr(spec, name).isoformat()
    for name in ("timezone", "jitter", "misfire_grace_time", "coalesce"):
        if getattr(spec, name) is not None:
            out[name] = getattr(spec, name)
    out["max_instances"] = spec.max_instances
    if spec.kind != "python":
        out["kind"] = spec.kind
    if spec.kind == "http":
        out.update(method=spec.method, headers=dict(spec.headers), body=spec.body)
    for name in ("timeout",):
        if getattr(spec, name) is not None:
            out[name] = getattr(spec, name)
    if spec.description:
        out["description"] = spec.description
    if spec.tags:
        out["tags"] = list(spec.tags)
    return out


def _is_flat(data: dict[str, Any]) -> bool:
    flat_fields = {name for names in _FLAT_TRIGGER_FIELDS.values() for name in names}
    return "func" in data or isinstance(data.get("trigger"), str) or bool(flat_fields & data.keys())


def merge_changes(current: JobSpec, changes: dict[str, Any]) -> JobSpec:
    """`current` with `changes` applied: our nested shape, or Flask-APScheduler's flat one (as its PATCH takes).
    A new trigger type brings only its own fields; the old trigger's fields are dropped."""
    if not isinstance(changes, dict):
        raise SpecError("changes must be a JSON object")
    if not _is_flat(changes):
        return parse_spec({**current.model_dump(mode="json"), **changes})
    # Flask-APScheduler's dict has no "paused" (it shows next_run_time None): an edit must not resume the job.
    base = {**to_flat(current), "paused": current.paused}
    new_type = changes.get("trigger", base["trigger"])
    if isinstance(new_type, str) and (new_type != base["trigger"] or set(_FLAT_TRIGGER_FIELDS.get(new_type, ())) & changes.keys()):
        for name in _FLAT_TRIGGER_FIELDS[base["trigger"]]:
            base.pop(name, None)
    return from_flat({**base, **changes})


def coerce_spec(data: JobSpec | dict[str, Any]) -> JobSpec:
    """A JobSpec from a JobSpec, our nested shape, or Flask-APScheduler's flat one."""
    if isinstance(data, JobSpec):
        return data
    if isinstance(data, dict) and _is_flat(data):
        return from_flat(data)
    return parse_spec(data)
