"""Triggers, durations and moments in words, with cron-descriptor doing the crontab prose."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_core.describe import describe_expression, describe_trigger, format_duration, format_relative
from scheduler_core.spec import CronTriggerSpec, DateTriggerSpec, IntervalTriggerSpec, parse_spec

UTC = timezone.utc


@pytest.mark.parametrize(
    ("units", "text"),
    [
        ({"seconds": 10}, "every 10 s"),
        ({"minutes": 5}, "every 5 min"),
        ({"hours": 1, "minutes": 30}, "every 1 h 30 min"),
        ({"minutes": 90}, "every 1 h 30 min"),
        ({"days": 2}, "every 2 days"),
        ({"days": 1}, "every 1 day"),
        ({"weeks": 2, "seconds": 5}, "every 2 weeks 5 s"),
        ({}, "every 1 s"),
    ],
)
def test_interval(units: dict[str, int], text: str) -> None:
    assert describe_trigger(IntervalTriggerSpec(**units)) == text


def test_date() -> None:
    assert describe_trigger(DateTriggerSpec(run_date=datetime(2026, 1, 2, 9, 30))) == "once at 2026-01-02 09:30"
    assert describe_trigger(DateTriggerSpec(run_date=datetime(2026, 1, 2, 9, 30, 15))) == "once at 2026-01-02 09:30:15"
    aware = DateTriggerSpec(run_date=datetime(2026, 1, 2, 8, 30, tzinfo=UTC))
    assert describe_trigger(aware, "Europe/Paris") == "once at 2026-01-02 09:30"
    assert describe_trigger(aware) == "once at 2026-01-02 08:30"
    assert describe_trigger(DateTriggerSpec()) == "once, when added"


@pytest.mark.parametrize(
    ("expression", "text"),
    [
        ("*/5 * * * *", "Every 5 minutes"),
        ("30 9 * * 1-5", "At 09:30, Monday through Friday"),
        ("30 9 * * MON-FRI", "At 09:30, Monday through Friday"),
        ("0 0 * * 0", "At 00:00, only on Sunday"),
        ("0 0 * * 7", "At 00:00, only on Sunday"),
        ("0 0 * * 5-7", "At 00:00, Friday through Sunday"),
        ("0 0 1 * 1", "At 00:00, on day 1 of the month, or on Monday"),
        ("*/10 * * * * *", "Every 10 seconds"),
        ("30 0 12 * * *", "At 12:00:30"),
        ("0 12 ? * 3", "At 12:00, only on Wednesday"),
        ("0 0 L * *", "At 00:00, on the last day of the month"),
        ("0 0 * * 5#3", "At 00:00, on the third Friday of the month"),
        ("0 0 * * 5L", "At 00:00, on the last Friday of the month"),
        ("0 0 * * L5", "At 00:00, on the last Friday of the month"),
        ("5-5 * * * *", "At 5 minutes past the hour"),
        ("@daily", "At 00:00"),
        ("@weekly", "At 00:00, only on Sunday"),
    ],
)
def test_expression(expression: str, text: str) -> None:
    assert describe_expression(expression) == text
    assert describe_trigger(CronTriggerSpec(expression=expression)) == text


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("61 * * * *", "minute: 61 is out of range 0-59"),
        ("* * *", "has 3 fields"),
        ("0 0 15W * *", "W (nearest weekday)"),
        ("", "is empty"),
    ],
)
def test_invalid_expression_raises_with_the_reason(expression: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        describe_expression(expression)


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"second": "*/10", "hour": "*"}, "Every 10 seconds"),
        ({"hour": 9}, "At 09:00"),
        ({"hour": 9, "minute": 30, "day_of_week": "mon-fri"}, "At 09:30, Monday through Friday"),
        # APScheduler numbers weekdays from 0 = Monday.
        ({"hour": 9, "day_of_week": "0-4"}, "At 09:00, Monday through Friday"),
        ({"day_of_week": "*/2"}, "At 00:00, only on Monday, Wednesday, Friday, and Sunday"),
        ({"month": "jan-mar", "day": "last"}, "At 00:00, on the last day of the month, January through March"),
        ({"minute": "10/5"}, "Every 5 minutes, starting at 10 minutes past the hour"),
        # What crontab can't say, or would say with a different meaning, is listed as given.
        ({"day": "last fri", "hour": 9}, "cron: hour=9 day=last fri"),
        ({"day": "3rd mon"}, "cron: day=3rd mon"),
        ({"week": "*/2"}, "cron: week=*/2"),
        ({"day": 1, "day_of_week": "mon"}, "cron: day_of_week=mon day=1"),
    ],
)
def test_cron_fields(fields: dict[str, object], text: str) -> None:
    assert describe_trigger(CronTriggerSpec(**fields)) == text


def test_a_job_specs_trigger() -> None:
    spec = parse_spec({"id": "j", "target": "m:f", "trigger": {"type": "cron", "expression": "0 9 * * 1-5"}})
    assert describe_trigger(spec.trigger, spec.timezone) == "At 09:00, Monday through Friday"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["*", "*/2", "*/15", "0", "1", "5", "7", "1-5", "5-2", "10/5", "1,15", "L", "5#3", "5L", "mon",
                         "jan-mar", "?", "59"]),
        min_size=5, max_size=6,
    ).map(" ".join)
)
def test_any_valid_expression_is_described(expression: str) -> None:
    try:
        text = describe_expression(expression)
    except ValueError:
        return
    assert text and not text.startswith("An error")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 ms"),
        (0.85, "850 ms"),
        (0.9996, "1.0 s"),
        (12.34, "12.3 s"),
        (59.96, "1 min"),
        (245, "4 min 5 s"),
        (3599.6, "1 h"),
        (7380, "2 h 3 min"),
        (7200, "2 h"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
        (-5, "-5.0 s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (timedelta(minutes=4, seconds=50), "in 4 min"),
        (timedelta(hours=-2, minutes=-10), "2 h ago"),
        (timedelta(0), "now"),
        (timedelta(seconds=-0.5), "now"),
        (timedelta(seconds=30), "in 30 s"),
        (timedelta(seconds=-59), "59 s ago"),
        (timedelta(days=3, hours=5), "in 3 d"),
    ],
)
def test_format_relative(offset: timedelta, text: str) -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert format_relative(now + offset, now) == text
