"""Triggers, durations and moments in short words, for the jobs table and the cron editor."""

from __future__ import annotations

import functools

from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.expressions import (
    AllExpression,
    LastDayOfMonthExpression,
    RangeExpression,
    WeekdayPositionExpression,
)
from apscheduler.triggers.cron.fields import BaseField
from cron_descriptor import ExpressionDescriptor, FormatError, MissingFieldError, Options

from . import cron
from .spec import CronTriggerSpec, DateTriggerSpec, IntervalTriggerSpec

# Fixed rather than taken from the process locale, so the table reads the same everywhere; crontab numbers
# weekdays from 0 = Sunday, which is what day_of_week_start_index_zero means.
_OPTIONS = Options(locale_code="en_US", use_24hour_time_format=True, day_of_week_start_index_zero=True)
_CRONTAB_WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")  # indexed by APScheduler's 0 = Monday


@functools.lru_cache(maxsize=8192)
def describe_trigger(
    trigger_spec: DateTriggerSpec | IntervalTriggerSpec | CronTriggerSpec, timezone: str | None = None
) -> str:
    """A short description of a trigger, e.g. "every 5 min", "once at 2026-01-02 09:30", "At 09:30, Monday
    through Friday". `timezone` is the job's: an aware run date is shown in it."""
    if isinstance(trigger_spec, DateTriggerSpec):
        return _describe_date(trigger_spec.run_date, timezone)
    if isinstance(trigger_spec, IntervalTriggerSpec):
        return "every " + _describe_interval(trigger_spec.total_seconds())
    if trigger_spec.expression is not None:
        try:
            return describe_expression(trigger_spec.expression)
        except ValueError:
            return f"cron: {trigger_spec.expression}"
    return _describe_fields(trigger_spec.fields())


def describe_expression(expression: str) -> str:
    """cron-descriptor's words for a crontab string ("Every 5 minutes"); ValueError with the reason if invalid."""
    errors = cron.check_expression(expression)
    if errors:
        raise ValueError("; ".join(error.reason for error in errors))
    fields = cron.normalize_expression(expression).split()
    if len(fields) == 5:
        fields.insert(0, "0")
    # Always the 7-field form: cron-descriptor reads some 6-field strings as ending in a year.
    text = " ".join(fields) + " *"
    return _crontab_words(text) or f"cron: {expression.strip()}"


def format_duration(seconds: float) -> str:
    """A duration in the largest units that fit: "850 ms", "12.3 s", "4 min 5 s", "2 h 3 min", "3 d 4 h"."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)} ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    # Round in the smallest unit shown, so 59 min 59.6 s reads "1 h", not "60 min".
    if round(seconds) < 3600:
        return _two_units(*divmod(round(seconds), 60), "min", "s")
    if round(seconds / 60) < 24 * 60:
        return _two_units(*divmod(round(seconds / 60), 60), "h", "min")
    return _two_units(*divmod(round(seconds / 3600), 24), "d", "h")


def format_relative(when: datetime, now: datetime) -> str:
    """`when` seen from `now`: "in 4 min", "2 h ago", "now" (under a second away). Rounds towards now."""
    delta = (when - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    amount = abs(delta)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if amount >= size:
            text = f"{int(amount // size)} {unit}"
            break
    else:
        text = f"{int(amount)} s"
    return f"in {text}" if delta > 0 else f"{text} ago"


def _two_units(big: int, small: int, big_unit: str, small_unit: str) -> str:
    return f"{big} {big_unit} {small} {small_unit}" if small else f"{big} {big_unit}"


def _describe_date(run_date: datetime | None, timezone: str | None) -> str:
    if run_date is None:
        return "once, when added"
    if run_date.tzinfo is not None and timezone:
        run_date = run_date.astimezone(ZoneInfo(timezone))
    return "once at " + run_date.strftime("%Y-%m-%d %H:%M:%S" if run_date.second else "%Y-%m-%d %H:%M")


def _describe_interval(total: int) -> str:
    weeks, rest = divmod(total, 7 * 86400)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [
        f"{weeks} week" + ("s" if weeks > 1 else "") if weeks else "",
        f"{days} day" + ("s" if days > 1 else "") if days else "",
        f"{hours} h" if hours else "",
        f"{minutes} min" if minutes else "",
        f"{seconds} s" if seconds else "",
    ]
    return " ".join(part for part in parts if part)


def _describe_fields(fields: dict[str, str]) -> str:
    compact = "cron: " + " ".join(f"{name}={fields[name]}" for name in reversed(cron.CRON_FIELDS) if name in fields)
    try:
        trigger = CronTrigger(**fields, timezone="UTC")
    except ValueError:
        return compact
    text = _as_crontab({field.name: field for field in trigger.fields})
    return (_crontab_words(text) if text else None) or compact


def _as_crontab(fields: dict[str, BaseField]) -> str | None:
    """APScheduler's fields (defaults filled in) as a 7-field crontab string, or None when crontab can't say it."""
    if str(fields["week"]) != "*" or any(isinstance(e, WeekdayPositionExpression) for e in fields["day"].expressions):
        return None
    day = ",".join("L" if isinstance(e, LastDayOfMonthExpression) else str(e) for e in fields["day"].expressions)
    weekdays = _weekdays(fields["day_of_week"])
    # APScheduler requires both day and day_of_week to match, where crontab fires on either.
    if day != "*" and weekdays != "*":
        return None
    parts = [str(fields[name]) for name in ("second", "minute", "hour")] + [day, str(fields["month"]), weekdays]
    return " ".join(parts + [str(fields["year"])])


def _weekdays(field: BaseField) -> str:
    """An APScheduler day_of_week field in crontab terms: names, since the two number the days differently."""
    indexes: set[int] = set()
    for expression in field.expressions:
        if isinstance(expression, RangeExpression):
            last = 6 if expression.last is None else expression.last
            indexes.update(range(expression.first, last + 1, expression.step or 1))
        elif isinstance(expression, AllExpression):
            indexes.update(range(0, 7, expression.step or 1))
    if len(indexes) == 7:
        return "*"
    return ",".join(
        _CRONTAB_WEEKDAYS[first] if first == last else f"{_CRONTAB_WEEKDAYS[first]}-{_CRONTAB_WEEKDAYS[last]}"
        for first, last in _stretches(sorted(indexes))
    )


def _stretches(indexes: list[int]) -> list[tuple[int, int]]:
    stretches: list[tuple[int, int]] = []
    for index in indexes:
        if stretches and stretches[-1][1] == index - 1:
            stretches[-1] = (stretches[-1][0], index)
        else:
            stretches.append((index, index))
    return stretches


def _crontab_words(text: str) -> str | None:
    try:
        return ExpressionDescriptor(text, _OPTIONS).get_description()
    except (FormatError, MissingFieldError):
        return None
