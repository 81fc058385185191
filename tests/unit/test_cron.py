"""Crontab strings become APScheduler triggers that fire exactly when crontab (as croniter reads it) would."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scheduler_core.cron import (
    check_expression,
    check_field,
    expression_trigger,
    next_fire_times,
    normalize_expression,
)
from scheduler_core.errors import FieldError, SpecError

UTC = timezone.utc
# A Wednesday, half a second past a minute so no fire time falls on it (croniter's next is strictly later,
# APScheduler's is at-or-after).
NOW = datetime(2025, 1, 1, 12, 0, 30, 500_000, tzinfo=UTC)


def fires(expression: str, count: int = 10, now: datetime = NOW, tz: str = "UTC") -> list[datetime]:
    return next_fire_times(expression_trigger(expression, timezone=tz), count, now)


def reasons(expression: str) -> list[str]:
    return [error.reason for error in check_expression(expression)]


# --- check_expression -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("61 * * * *", "minute: 61 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("0 0 32 * *", "day: 32 is out of range 1-31"),
        ("0 0 0 * *", "day: 0 is out of range 1-31"),
        ("0 0 * 13 *", "month: 13 is out of range 1-12"),
        ("0 0 * * 8", "day_of_week: 8 is out of range 0-7"),
        ("60 * * * * *", "second: 60 is out of range 0-59"),
        ("0 0-70 * * *", "hour: 70 is out of range 0-23"),
        ("1,2,99 * * * *", "minute: 99 is out of range 0-59"),
        ("*/0 * * * *", "minute: the step in '*/0' must be a whole number above 0"),
    ],
)
def test_out_of_range_names_the_field_and_the_range(expression: str, reason: str) -> None:
    assert check_expression(expression) == [FieldError("expression", reason)]


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("", ["is empty"]),
        ("* * *", ["has 3 fields", "5", "6 with seconds first"]),
        ("* * * * * * *", ["has 7 fields"]),
        ("@reboot", ["unknown macro '@reboot'", "@daily"]),
        ("0 0 * JANX *", ["month: 'JANX' is not valid", "jan-dec"]),
        ("0 0 * * funday", ["day_of_week: 'funday' is not valid", "sun-sat"]),
        ("H * * * *", ["minute: 'H' is not valid"]),
        ("0 0 15W * *", ["day: '15W'", "W (nearest weekday)", "APScheduler"]),
        ("0 0 1 * 5#3", ["day:", "5#3", "use * for day"]),
        ("0 0 * * 1#2,3", ["day_of_week: '1#2,3' mixes plain days"]),
        ("0 0 * * 1#6", ["day_of_week: '1#6' is not valid"]),
        ("0 0 31 2 *", ["day: '31' never occurs in month '2'"]),
        ("0 0 30,31 feb *", ["never occurs"]),
        # * in a list: croniter expands it next to the numbers (found by hypothesis; it crashed the check)
        ("* * * *,1 *", ["month: '*,1' lists * with other values", "use * alone"]),
        ("0 0 1,* * *", ["day: '1,*' lists *"]),
        ("0 0 * * 1,*", ["day_of_week: '1,*' lists *"]),
        ("*/5,* * * * * *", ["second: '*/5,*' lists *"]),
        ("0 0 L,* * *", ["day: 'L,*' lists *"]),
    ],
)
def test_refusals_say_why(expression: str, words: list[str]) -> None:
    [error] = check_expression(expression)
    assert error.field == "expression"
    for word in words:
        assert word in error.reason


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *", "*/5 * * * *", "0 9 * * 1-5", "0 9 * * MON-FRI", "0 0 * * 7", "0 0 1,15 * *", "0 0 L * *",
        "0 0 * * 5#3", "0 0 * * 5L", "0 0 * * L5", "*/10 * * * * *", "0 0 12 ? * 3", "0 0 29 2 *", "0 0 30 2 1",
        "@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually", "@DAILY", "  0  9 * * *  ",
    ],
)
def test_accepted(expression: str) -> None:
    assert check_expression(expression) == []
    expression_trigger(expression, timezone="UTC")


def test_building_an_invalid_expression_raises_the_same_error() -> None:
    with pytest.raises(SpecError) as caught:
        expression_trigger("61 * * * *", timezone="UTC")
    assert caught.value.errors == check_expression("61 * * * *")


def test_normalize_expression() -> None:
    assert normalize_expression("@daily") == "0 0 * * *"
    assert normalize_expression(" 5-5  * 1-L * l5 ") == "5 * 1-31 * 5L"
    assert normalize_expression("0 0 * mar-mar sun-0") == "0 0 * mar sun"
    with pytest.raises(ValueError, match="has 2 fields"):
        normalize_expression("* *")


# --- what the trigger fires on -------------------------------------------------------------------------------


def test_weekdays_one_to_five_are_monday_to_friday() -> None:
    times = fires("0 9 * * 1-5", 10)
    assert {t.weekday() for t in times} == {0, 1, 2, 3, 4}
    assert all((t.hour, t.minute, t.second) == (9, 0, 0) for t in times)
    assert times[0] == datetime(2025, 1, 2, 9, 0, tzinfo=UTC)  # Thursday; the 1st's 09:00 is past


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
def test_zero_and_seven_are_sunday(sunday: str) -> None:
    times = fires(f"0 0 * * {sunday}", 5)
    assert [t.weekday() for t in times] == [6] * 5
    assert times[0] == datetime(2025, 1, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("dow", "weekdays"),
    [
        ("*/2", {6, 1, 3, 5}),  # crontab 0,2,4,6: Sun, Tue, Thu, Sat
        ("1-5/2", {0, 2, 4}),
        ("0-2", {6, 0, 1}),
        ("5-7", {4, 5, 6}),
        ("5-2", {4, 5, 6, 0, 1}),  # croniter wraps a backwards range
        ("1,3,6", {0, 2, 5}),
        ("sat-sun", {5, 6}),
    ],
)
def test_numeric_weekdays_are_converted(dow: str, weekdays: set[int]) -> None:
    assert {t.weekday() for t in fires(f"0 0 * * {dow}", 21)} == weekdays


def test_day_and_weekday_both_restricted_fire_on_either() -> None:
    trigger = expression_trigger("0 0 1 * 1", timezone="UTC")
    assert isinstance(trigger, OrTrigger)
    times = next_fire_times(trigger, 12, NOW)
    assert all(t.day == 1 or t.weekday() == 0 for t in times)
    assert datetime(2025, 2, 1, tzinfo=UTC) in times  # a Saturday, fired for being the 1st
    assert datetime(2025, 1, 6, tzinfo=UTC) in times  # a Monday, fired for being Monday


def test_only_one_restricted_is_a_single_trigger() -> None:
    assert isinstance(expression_trigger("0 0 1 * *", timezone="UTC"), CronTrigger)
    assert isinstance(expression_trigger("0 0 * * 1", timezone="UTC"), CronTrigger)
    assert isinstance(expression_trigger("0 0 ? * 1", timezone="UTC"), CronTrigger)


def test_impossible_day_with_a_weekday_still_fires_on_the_weekday() -> None:
    times = fires("0 0 30 2 1", 4)
    assert all(t.month == 2 and t.weekday() == 0 for t in times)


def test_six_fields_put_seconds_first() -> None:
    times = fires("*/10 * * * * *", 6)
    assert [t.second for t in times] == [40, 50, 0, 10, 20, 30]
    assert all(b - a == timedelta(seconds=10) for a, b in zip(times, times[1:]))


def test_five_fields_fire_on_the_minute() -> None:
    assert [t.second for t in fires("* * * * *", 3)] == [0, 0, 0]


def test_last_day_of_month() -> None:
    assert [t.date().isoformat() for t in fires("0 0 L * *", 3)] == ["2025-01-31", "2025-02-28", "2025-03-31"]


def test_nth_weekday() -> None:
    trigger = expression_trigger("0 0 * * 5#3", timezone="UTC")
    assert "3rd fri" in str(trigger)
    assert [t.day for t in next_fire_times(trigger, 3, NOW)] == [17, 21, 21]  # Jan, Feb, Mar 2025


@pytest.mark.parametrize("last_friday", ["5L", "5l", "L5"])
def test_last_weekday(last_friday: str) -> None:
    times = fires(f"0 0 * * {last_friday}", 3)
    assert [t.date().isoformat() for t in times] == ["2025-01-31", "2025-02-28", "2025-03-28"]


def test_equal_range_is_the_single_value_as_in_crontab() -> None:
    assert [t.minute for t in fires("5-5 * * * *", 3)] == [5, 5, 5]


def test_macros() -> None:
    assert fires("@hourly", 2) == [datetime(2025, 1, 1, 13, tzinfo=UTC), datetime(2025, 1, 1, 14, tzinfo=UTC)]
    assert fires("@weekly", 1) == [datetime(2025, 1, 5, tzinfo=UTC)]
    assert fires("@yearly", 1) == [datetime(2026, 1, 1, tzinfo=UTC)]


def test_timezone_is_kept_across_a_dst_change() -> None:
    new_york = ZoneInfo("America/New_York")
    now = datetime(2025, 3, 7, 12, tzinfo=new_york)  # DST starts 2025-03-09
    times = fires("0 9 * * *", 4, now, tz="America/New_York")
    assert [(t.day, t.hour, t.minute) for t in times] == [(8, 9, 0), (9, 9, 0), (10, 9, 0), (11, 9, 0)]
    assert [t.utcoffset() for t in times] == [timedelta(hours=-5)] + [timedelta(hours=-4)] * 3
    assert all(t.tzinfo == new_york for t in times)


def test_start_end_and_jitter_are_passed_through() -> None:
    start = datetime(2025, 1, 10, tzinfo=UTC)
    end = datetime(2025, 1, 20, tzinfo=UTC)
    trigger = expression_trigger("0 0 * * *", timezone="UTC", start_date=start, end_date=end, jitter=5)
    assert isinstance(trigger, CronTrigger)
    assert (trigger.start_date, trigger.end_date, trigger.jitter) == (start, end, 5)
    either = expression_trigger("0 0 1 * 1", timezone="UTC", start_date=start, end_date=end, jitter=5)
    assert isinstance(either, OrTrigger)
    assert either.jitter == 5
    assert all((part.start_date, part.end_date, part.jitter) == (start, end, None) for part in either.triggers)
    times = next_fire_times(expression_trigger("0 0 * * *", timezone="UTC", start_date=start, end_date=end), 50, NOW)
    assert times[0] == start and times[-1] == end and len(times) == 11


# --- next_fire_times -------------------------------------------------------------------------------------------


def test_next_fire_times_stops_when_the_trigger_ends() -> None:
    run = datetime(2025, 2, 1, 8, tzinfo=UTC)
    assert next_fire_times(DateTrigger(run_date=run), 5, NOW) == [run]
    assert next_fire_times(DateTrigger(run_date=run), 0, NOW) == []


def test_next_fire_times_are_in_the_triggers_timezone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    times = next_fire_times(IntervalTrigger(minutes=30, start_date=NOW, timezone=tokyo), 3, NOW)
    assert all(t.tzinfo == tokyo for t in times)
    assert times[1] - times[0] == timedelta(minutes=30)


def test_next_fire_times_defaults_to_now_and_refuses_naive() -> None:
    [upcoming] = next_fire_times(expression_trigger("* * * * *", timezone="UTC"), 1)
    assert timedelta(0) <= upcoming - datetime.now(UTC) <= timedelta(minutes=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire_times(CronTrigger(minute="*", timezone="UTC"), 1, datetime(2025, 1, 1))


# --- check_field -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("year", "2026"), ("year", "*/2"), ("month", "jan-mar"), ("month", "1,6,12"), ("week", "1-53/2"),
        ("day", "last"), ("day", "3rd fri"), ("day", "last sun"), ("day", "1-15/2,last"), ("day_of_week", "mon-fri"),
        ("day_of_week", "0-4"), ("day_of_week", "SAT,SUN"), ("hour", "*"), ("hour", "*/3"), ("minute", "0,30"),
        ("minute", "10/5"), ("second", "*/10"),
    ],
)
def test_check_field_accepts_apschedulers_expressions(name: str, value: str) -> None:
    assert check_field(name, value) is None


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("hour", "25", ["'25'", "maximum value (23)", "hour takes 0-23"]),
        ("minute", "60", ["maximum value (59)"]),
        ("day", "0", ["minimum value (1)"]),
        ("day", "6th fri", ["'6th fri'"]),
        ("day", "lastfri", ["'fri' after 'last' is not understood"]),
        ("day_of_week", "mon fri", ["' fri' after 'mon' is not understood"]),
        ("day_of_week", "mon-fri/2", ["'/2'"]),
        ("day_of_week", "7", ["maximum value (6)", "0 is Monday"]),
        ("day_of_week", "funday", ["'funday'"]),
        ("month", "13", ["maximum value (12)"]),
        ("hour", "*/0", ["higher than 0"]),
        ("hour", "5-2", ["range"]),
        ("hour", "", ["is empty"]),
        ("fortnight", "1", ["unknown cron field"]),
    ],
)
def test_check_field_refusals_are_clear(name: str, value: str, words: list[str]) -> None:
    reason = check_field(name, value)
    assert reason is not None
    for word in words:
        assert word in reason


def test_a_huge_bad_value_is_quoted_cut_short() -> None:
    """A pasted 5,000-character value made a 10,000-character message (quoted, then repeated by APScheduler)."""
    for reason in (check_field("hour", "9" * 5000), check_expression("a" * 5000 + " * * * *")[0].reason,
                   check_expression("0 0 * * 1,*" + ",1" * 2000)[0].reason):
        assert reason is not None and len(reason) < 300 and "…" in reason, reason


# --- properties: agreement with croniter, and validation agreeing with building -------------------------------

RANGES = {"minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "day_of_week": (0, 7)}
MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


@st.composite
def crontab_token(draw: st.DrawFn, field: str) -> str:
    low, high = RANGES[field]
    value = st.integers(low, high)

    def spell(number: int) -> str:
        if field == "month" and draw(st.booleans()):
            return MONTH_NAMES[number - 1]
        # 7 stays a number: "sun-sun" is an equal range, "sun-7" the whole week.
        if field == "day_of_week" and number < 7 and draw(st.booleans()):
            return DAY_NAMES[number]
        return str(number)

    kind = draw(st.sampled_from(["value", "range", "range_step", "star_step", "start_step"]))
    if kind == "value":
        return spell(draw(value))
    if kind == "star_step":
        return f"*/{draw(st.integers(1, high))}"
    if kind == "start_step":
        return f"{draw(value)}/{draw(st.integers(1, high))}"
    first, last = draw(value), draw(value)
    # An equal range is the one spelling croniter reads differently from crontab (see the unit test above).
    assume(first != last)
    token = f"{spell(first)}-{spell(last)}"
    return token + (f"/{draw(st.integers(1, high))}" if kind == "range_step" else "")


@st.composite
def crontab_field(draw: st.DrawFn, field: str) -> str:
    if draw(st.integers(0, 3)) == 0:
        return "*"
    return ",".join(draw(st.lists(crontab_token(field), min_size=1, max_size=3)))


@st.composite
def crontab_expression(draw: st.DrawFn) -> str:
    fields = {name: draw(crontab_field(name)) for name in RANGES}
    extra = draw(st.sampled_from(["", "", "", "last_day", "nth", "last_weekday"]))
    if extra == "last_day":
        fields["day"] = draw(st.sampled_from(["L", "1,L", "L,15"]))
    elif extra in ("nth", "last_weekday"):
        fields["day"] = "*"
        weekday = draw(st.integers(0, 7))
        fields["day_of_week"] = f"{weekday}#{draw(st.integers(1, 5))}" if extra == "nth" else f"{weekday}L"
    return " ".join(fields[name] for name in RANGES)


def croniter_times(expression: str, start: datetime, count: int) -> list[datetime]:
    # croniter spells "last Friday" L5.
    dialect = " ".join(f"L{token[0]}" if token.endswith("L") and token[:-1].isdigit() else token
                       for token in expression.split())
    iterator = croniter(dialect, start)
    return [iterator.get_next(datetime) for _ in range(count)]


@settings(max_examples=200, deadline=None)
@given(
    expression=crontab_expression(),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31)),
)
def test_fire_times_match_croniter(expression: str, start: datetime) -> None:
    refused = reasons(expression)
    # The generator writes only valid crontab; the one refusal is a day that never occurs (31 Feb), which croniter
    # would search for in vain.
    assert all("never occurs" in reason for reason in refused)
    assume(not refused)
    start = start.replace(microsecond=500_000, tzinfo=UTC)
    ours = next_fire_times(expression_trigger(expression, timezone="UTC"), 10, start)
    assert ours == croniter_times(expression, start, 10)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        crontab_expression(),
        st.lists(
            st.one_of(
                st.sampled_from(["*", "?", "L", "W", "#", "/", "-", ",", "H", "mon", "jan", "7", "0", "31", "60", "5L",
                                 "1#5", "15W", "*/0", "1-L", "@daily", "@reboot", "x"]),
                st.text(alphabet="0123456789*/-,#LW?", min_size=1, max_size=6),
            ),
            min_size=1, max_size=7,
        ).map(" ".join),
    )
)
def test_validation_and_building_agree(expression: str) -> None:
    errors = check_expression(expression)
    try:
        expression_trigger(expression, timezone="UTC")
    except SpecError as exc:
        assert exc.errors == errors and errors
        assert all(error.field == "expression" for error in errors)
    else:
        assert errors == []
