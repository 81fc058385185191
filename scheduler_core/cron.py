"""Cron semantics, once: every crontab string becomes its trigger here, and APScheduler cron fields are checked here.

APScheduler's trigger is what actually fires, so it is the truth for next-run times and previews. croniter validates
and expands the crontab-string form; the expansion is handed to APScheduler as explicit values, so the two can never
read one expression differently (crontab's 0/7 = Sunday against APScheduler's 0 = Monday being the classic trap).
"""

from __future__ import annotations

import functools

import re
from datetime import datetime, tzinfo
from itertools import groupby

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import BaseCombiningTrigger, OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.fields import SEPARATOR
from apscheduler.triggers.date import DateTrigger
from croniter import CroniterError, croniter

from .errors import FieldError, SpecError, quoted

CRON_FIELDS = ("year", "month", "week", "day", "day_of_week", "hour", "minute", "second")

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_CRONTAB_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
# croniter's positions in its expansion, whichever end the seconds were written at.
_CRONITER_INDEX = {"minute": 0, "hour": 1, "day": 2, "month": 3, "day_of_week": 4, "second": 5}
_CRONTAB_RANGES = {
    "second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12), "day_of_week": (0, 7),
}
_CRONTAB_TAKES = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day": "1-31 or L (last day)",
    "month": "1-12 or jan-dec",
    "day_of_week": "0-7 or sun-sat (0 and 7 are Sunday), 5#3 (3rd Friday) or 5L (last Friday)",
}
_NAMES = {
    "month": {name: number for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)},
    "day_of_week": {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler's order: 0 is Monday
_POSITIONS = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 5: "5th", "l": "last"}
_DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}

_EQUAL_RANGE = re.compile(r"^(\w+)-(\w+)(?:/\d+)?$")
_LAST_WEEKDAY = re.compile(r"^(?:(\d)l|l(\d))$", re.IGNORECASE)
_NEAREST_WEEKDAY = re.compile(r"^(?:\d+w|w\d+)$", re.IGNORECASE)

_APSCHEDULER_TAKES = {
    "year": "1970-9999",
    "month": "1-12 or jan-dec",
    "week": "1-53 (ISO week)",
    "day": "1-31, last, 'xth y' (e.g. 3rd fri) or 'last y'",
    "day_of_week": "0-6 or mon-sun (0 is Monday)",
    "hour": "0-23",
    "minute": "0-59",
    "second": "0-59",
}


def check_field(name: str, value: str) -> str | None:
    """The reason `value` is not a valid APScheduler cron `name` field, or None."""
    if name not in CRON_FIELDS:
        return f"unknown cron field {quoted(name)}; use one of {', '.join(CRON_FIELDS)}"
    text = str(value).strip()
    if not text:
        return f"is empty; {name} takes {_APSCHEDULER_TAKES[name]}"
    field_class = CronTrigger.FIELDS_MAP[name]
    for token in SEPARATOR.split(text):
        try:
            field_class(name, token)
        except (ValueError, TypeError) as exc:
            detail = re.sub(r"^Error validating expression '.*?': ", "", str(exc))
            detail = re.sub(r"\(([^()]{60,})\)", lambda m: f"({m.group(1)[:59]}…)", detail)  # it repeats the value
            return f"{quoted(token)} is invalid: {detail}; {name} takes {_APSCHEDULER_TAKES[name]}"
        # APScheduler matches some expressions by prefix only, so 'mon fri' would silently mean 'mon'.
        for compiler in field_class.COMPILERS:
            match = compiler.value_re.match(token)
            if match:
                if match.end() < len(token):
                    return (
                        f"{quoted(token)} is invalid: {quoted(token[match.end():])} after {quoted(match.group())} "
                        f"is not understood; {name} takes {_APSCHEDULER_TAKES[name]}"
                    )
                break
    return None


class _Refused(Exception):
    """An expression this module will not run; `reason` names the crontab field when it can."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _split(expression: str) -> dict[str, str]:
    text = expression.strip()
    if not text:
        raise _Refused("is empty; give 5 fields (minute hour day month day_of_week) or 6 with seconds first")
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise _Refused(f"unknown macro {quoted(text)}; use one of {', '.join(_MACROS)}")
        text = _MACROS[text.lower()]
    parts = text.split()
    if len(parts) not in (5, 6):
        raise _Refused(
            f"has {len(parts)} fields; give 5 (minute hour day month day_of_week) or 6 with seconds first "
            "(second minute hour day month day_of_week)"
        )
    names = _CRONTAB_FIELDS if len(parts) == 5 else ("second",) + _CRONTAB_FIELDS
    return {name: _normalize_field(name, part) for name, part in zip(names, parts)}


def _normalize_field(name: str, text: str) -> str:
    tokens = []
    for token in text.split(","):
        equal = _EQUAL_RANGE.match(token)
        # croniter widens an equal range such as 5-5 to the whole cycle; crontab means the single value.
        if equal and _number(name, equal[1]) is not None and _number(name, equal[1]) == _number(name, equal[2]):
            token = equal[1]
        last = _LAST_WEEKDAY.match(token) if name == "day_of_week" else None
        if last:
            token = f"{last[1] or last[2]}L"
        if name == "day":
            # croniter reads 1-L as 1-31; say so, for describers that would print "between day 1 and L".
            token = re.sub(r"^(\d+)-L(?=/|$)", r"\1-31", token, flags=re.IGNORECASE)
        tokens.append(token)
    return ",".join(tokens)


def _number(name: str, text: str) -> int | None:
    if text.isdigit():
        return int(text)
    return _NAMES.get(name, {}).get(text.lower())


def normalize_expression(expression: str) -> str:
    """`expression` with macros expanded, single spaces, 5-5 written 5 and last weekdays as 5L; raises ValueError."""
    try:
        return " ".join(_split(expression).values())
    except _Refused as exc:
        raise ValueError(exc.reason) from None


def _croniter_text(fields: dict[str, str]) -> str:
    # croniter spells "last Friday" L5, where Quartz and cron-descriptor write 5L.
    dow = ",".join(re.sub(r"^(\d)L$", r"L\1", token) for token in fields["day_of_week"].split(","))
    return " ".join(dow if name == "day_of_week" else text for name, text in fields.items())


def _expand(fields: dict[str, str]) -> tuple[list[list[int | str]], dict[int, set[int | str]]]:
    try:
        return croniter.expand(_croniter_text(fields), second_at_beginning=True)
    except CroniterError:
        raise _Refused(_locate(fields)) from None


def _locate(fields: dict[str, str]) -> str:
    """Which crontab field croniter refused, and why, in words."""
    for name, text in fields.items():
        if _isolated_ok(fields, name, text):
            continue
        for token in text.split(","):
            if not _isolated_ok(fields, name, token):
                return f"{name}: {_token_reason(name, token)}"
        if name == "day_of_week":
            return f"{name}: {quoted(text)} mixes plain days with 5#3 or 5L days; use one kind or the other"
        return f"{name}: {quoted(text)} is not valid; {name} takes {_CRONTAB_TAKES[name]}"
    return "is not a valid crontab expression"


def _isolated_ok(fields: dict[str, str], name: str, text: str) -> bool:
    alone = {other: (text if other == name else "*") for other in fields}
    try:
        croniter.expand(_croniter_text(alone), second_at_beginning=True)
    except CroniterError:
        return False
    return True


def _token_reason(name: str, token: str) -> str:
    low, high = _CRONTAB_RANGES[name]
    base, slash, step = token.partition("/")
    if slash and (not step.isdigit() or int(step) == 0):
        return f"the step in {quoted(token)} must be a whole number above 0"
    for part in base.split("-"):
        if part.isdigit() and not low <= int(part) <= high:
            return f"{part} is out of range {low}-{high}"
    return f"{quoted(token)} is not valid; {name} takes {_CRONTAB_TAKES[name]}"


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Consecutive stretches of `values`, as (first, last): [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    stretches = []
    for _, group in groupby(enumerate(sorted(set(values))), key=lambda pair: pair[1] - pair[0]):
        run = [value for _, value in group]
        stretches.append((run[0], run[-1]))
    return stretches


def _compact(values: list[int]) -> str:
    """Whole numbers as an APScheduler list of ranges: [0, 1, 2, 5] -> '0-2,5'."""
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in _runs(values))


@functools.lru_cache(maxsize=4096)
def _schedule(expression: str) -> list[dict[str, str]]:
    """(Cached: croniter's expansion is the costliest step of loading a stored job; callers never mutate the result.)
    APScheduler cron fields for `expression`: one set, or two that fire on either (day OR day_of_week)."""
    fields = _split(expression)
    expanded, nth = _expand(fields)
    for name, text in fields.items():
        found = expanded[_CRONITER_INDEX[name]]
        if "*" in found and len(found) > 1:
            # Crontab reads "*,1" in day or day_of_week by its first character (1,* restricts, *,1 does not):
            # refused rather than guessed.
            every = "day of the week" if name == "day_of_week" else name
            raise _Refused(
                f"{name}: {quoted(text)} lists * with other values; use * alone (every {every}) or the values")
    if any(_NEAREST_WEEKDAY.match(token) for token in fields["day"].split(",")):
        raise _Refused(f"day: {quoted(fields['day'])} uses W (nearest weekday), which APScheduler cannot express")

    def values(name: str) -> list[int | str]:
        return expanded[_CRONITER_INDEX[name]]

    def plain(name: str) -> str:
        found = values(name)
        return "*" if found == ["*"] else _compact([int(v) for v in found])

    day_restricted = values("day") != ["*"]
    dow_restricted = values("day_of_week") != ["*"]
    if nth and day_restricted:
        # croniter intersects the two here while crontab's rule would unite them; refuse rather than guess.
        raise _Refused(
            "day: a day of month can't be combined with 5#3 or 5L in day_of_week; use * for day or for day_of_week"
        )
    days = values("day")
    # The 31st of February: refused when it is the whole schedule, left out when day_of_week may still fire.
    day_possible = days == ["*"] or "l" in days or values("month") == ["*"] or (
        min(int(v) for v in days) <= max(_DAYS_IN_MONTH[int(m)] for m in values("month"))
    )
    if not day_possible and not dow_restricted:
        raise _Refused(f"day: {quoted(fields['day'])} never occurs in month {quoted(fields['month'])}")

    if nth:
        # APScheduler keeps "3rd fri" and "last fri" in its day field.
        day = ",".join(
            f"{_POSITIONS[n]} {_WEEKDAYS[(int(d) - 1) % 7]}" for d in sorted(nth) for n in sorted(nth[d], key=str)
        )
        day_of_week = "*"
    else:
        numbered = _compact([int(v) for v in days if v != "l"]) if days != ["*"] else "*"
        day = ",".join(part for part in (numbered, "last" if "l" in days else "") if part)
        day_of_week = _weekday_names([int(v) for v in values("day_of_week")]) if dow_restricted else "*"
    common = {
        "second": plain("second") if "second" in fields else "0",
        "minute": plain("minute"),
        "hour": plain("hour"),
        "month": plain("month"),
    }
    by_weekday = {**common, "day": "*", "day_of_week": day_of_week}
    if not (day_restricted and dow_restricted):
        return [{**common, "day": day, "day_of_week": day_of_week}]
    if not day_possible:
        return [by_weekday]
    return [{**common, "day": day, "day_of_week": "*"}, by_weekday]


def _weekday_names(crontab_days: list[int]) -> str:
    """Crontab weekdays (0 = Sunday) as APScheduler names, in runs like 'mon-fri' that never wrap."""
    return ",".join(
        _WEEKDAYS[first] if first == last else f"{_WEEKDAYS[first]}-{_WEEKDAYS[last]}"
        for first, last in _runs([(day - 1) % 7 for day in crontab_days])
    )


def check_expression(expression: str) -> list[FieldError]:
    """Why `expression` is not a crontab string this scheduler can run (5 fields, 6 with seconds first, or a macro)."""
    return list(_check_expression(expression))


@functools.lru_cache(maxsize=4096)
def _check_expression(expression: str) -> tuple[FieldError, ...]:
    try:
        schedule = _schedule(expression)
        _build(schedule, timezone="UTC", start_date=None, end_date=None, jitter=None)
    except _Refused as exc:
        return (FieldError("expression", exc.reason),)
    return ()


def expression_trigger(
    expression: str,
    *,
    timezone: tzinfo | str,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    jitter: int | None = None,
) -> BaseTrigger:
    """The APScheduler trigger that fires exactly when crontab would run `expression`; raises SpecError if invalid."""
    try:
        return _build(_schedule(expression), timezone=timezone, start_date=start_date, end_date=end_date, jitter=jitter)
    except _Refused as exc:
        raise SpecError(FieldError("expression", exc.reason)) from None


def _build(
    schedule: list[dict[str, str]],
    *,
    timezone: tzinfo | str,
    start_date: datetime | None,
    end_date: datetime | None,
    jitter: int | None,
) -> BaseTrigger:
    common = {"timezone": timezone, "start_date": start_date, "end_date": end_date}
    try:
        if len(schedule) == 1:
            return CronTrigger(**schedule[0], **common, jitter=jitter)
        parts = [CronTrigger(**fields, **common) for fields in schedule]
    except ValueError as exc:
        raise _Refused(f"APScheduler cannot express it: {exc}") from None
    # Jitter goes on the OrTrigger alone: jittering both parts and taking the earlier would skew runs early.
    return OrTrigger(parts, jitter=jitter)


def next_fire_times(trigger: BaseTrigger, count: int = 5, now: datetime | None = None) -> list[datetime]:
    """The next `count` times `trigger` fires after `now` (default: the current time), in the trigger's timezone."""
    zone = _timezone_of(trigger)
    if now is None:
        now = datetime.now(zone)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    times: list[datetime] = []
    previous: datetime | None = None
    for _ in range(max(count, 0)):
        upcoming = trigger.get_next_fire_time(previous, now)
        # A trigger that does not move forward would only repeat itself.
        if upcoming is None or (previous is not None and upcoming <= previous):
            break
        times.append(upcoming.astimezone(zone) if zone else upcoming)
        previous = now = upcoming
    return times


def _timezone_of(trigger: BaseTrigger) -> tzinfo | None:
    if isinstance(trigger, BaseCombiningTrigger):
        return _timezone_of(trigger.triggers[0]) if trigger.triggers else None
    if isinstance(trigger, DateTrigger):
        return trigger.run_date.tzinfo
    return getattr(trigger, "timezone", None)
