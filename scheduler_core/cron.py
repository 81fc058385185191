"""Cron semantics, once: every crontab string or set of APScheduler cron fields becomes a trigger here.

APScheduler's CronTrigger is what actually fires, so it is the truth for previews. croniter only validates the
crontab-string form. (Stub; the full translation lives in the cron issue work.)
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from .errors import FieldError

CRON_FIELDS = ("year", "month", "week", "day", "day_of_week", "hour", "minute", "second")


def check_field(name: str, value: str) -> str | None:
    """The reason `value` is not a valid APScheduler cron `name` field, or None."""
    try:
        CronTrigger(**{name: value}, timezone="UTC")
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def check_expression(expression: str) -> list[FieldError]:
    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except (ValueError, TypeError) as exc:
        return [FieldError("expression", str(exc))]
    return []


def expression_trigger(
    expression: str,
    *,
    timezone: tzinfo | str,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    jitter: int | None = None,
) -> BaseTrigger:
    values = expression.split()
    return CronTrigger(
        minute=values[0], hour=values[1], day=values[2], month=values[3], day_of_week=values[4],
        timezone=timezone, start_date=start_date, end_date=end_date, jitter=jitter,
    )
