"""JobSpec validation: every bad input names its field and reason; flat (Flask-APScheduler) and nested shapes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_core.errors import SpecError
from scheduler_core.spec import (
    CronTriggerSpec,
    IntervalTriggerSpec,
    JobSpec,
    build_trigger,
    from_flat,
    merge_changes,
    parse_spec,
    to_flat,
)


def errors_of(data: dict, flat: bool = False) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        from_flat(data) if flat else parse_spec(data)
    return {e.field: e.reason for e in info.value.errors}


BASE = {"id": "j", "target": "tests.sample_jobs:add"}


@pytest.mark.parametrize(
    ("data", "field", "reason_part"),
    [
        ({**BASE, "kind": "ftp"}, "kind", "'python', 'shell' or 'http'"),
        ({**BASE, "trigger": {"type": "cron", "hour": "25"}}, "trigger.hour", "23"),
        ({**BASE, "trigger": {"type": "cron", "minute": 60}}, "trigger.minute", "59"),
        ({**BASE, "trigger": {"type": "cron", "day_of_week": "funday"}}, "trigger.day_of_week", ""),
        ({**BASE, "trigger": {"type": "interval", "seconds": 0}}, "trigger.seconds", "longer than zero"),
        ({**BASE, "trigger": {"type": "interval", "minutes": -1}}, "trigger.minutes", "greater than or equal to 0"),
        ({**BASE, "trigger": {"type": "bogus"}}, "trigger", ""),
        ({**BASE, "timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
        # Too long for a file name: zoneinfo raised OSError (found by fuzzing); the message quotes it cut short.
        ({**BASE, "timezone": "é" * 300}, "timezone", "unknown timezone 'ééé"),
        ({**BASE, "start_date": "2026-02-01T00:00:00", "end_date": "2026-01-01T00:00:00"}, "end_date", "before"),
        ({**BASE, "args": "1,2"}, "args", "list"),
        ({**BASE, "kwargs": [1]}, "kwargs", "dictionary"),
        ({**BASE, "max_instances": 0}, "max_instances", "greater than or equal to 1"),
        ({**BASE, "misfire_grace_time": 0}, "misfire_grace_time", "greater than 0"),
        ({**BASE, "surprise": 1}, "surprise", "unknown field"),
        ({"target": "m:f"}, "id", "required"),
        ({**BASE, "id": "has space"}, "id", "may not contain spaces"),
        ({**BASE, "target": "nocolon"}, "target", "module:function"),
        ({**BASE, "kind": "http", "target": "ftp://x"}, "target", "http://"),
        ({**BASE, "method": "POST"}, "method", "http jobs only"),
        ({**BASE, "kind": "http", "target": "http://x", "method": "FETCH"}, "method", "one of"),
        ({**BASE, "trigger": {"type": "cron", "expression": "*/5 * * *"}}, "trigger.expression", ""),
        ({**BASE, "trigger": {"type": "cron", "expression": "* * * * *", "hour": "1"}}, "trigger.expression", "not both"),
        ({**BASE, "trigger": {"type": "cron"}}, "trigger.expression", "needs an expression"),
    ],
)
def test_bad_input_names_field_and_reason(data: dict, field: str, reason_part: str) -> None:
    errors = errors_of(data)
    assert field in errors, errors
    assert reason_part in errors[field]


def test_flat_shape_names_fields_as_typed() -> None:
    errors = errors_of({"id": "job3", "func": "app.jobs:job1", "trigger": "cron", "hour": "25"}, flat=True)
    assert set(errors) == {"hour"}
    errors = errors_of({"id": "job3", "func": "app.jobs:job1", "trigger": "interval", "seconds": -1}, flat=True)
    assert set(errors) == {"seconds"}
    errors = errors_of({"id": "job3", "func": "m:f", "trigger": "weekly"}, flat=True)
    assert "unknown trigger" in errors["trigger"]
    # Not a string: it raised TypeError (unhashable) instead (found by fuzzing).
    errors = errors_of({"id": "job3", "func": "m:f", "trigger": [1]}, flat=True)
    assert "unknown trigger [1]" in errors["trigger"]


def test_seed_readme_jobs_parse() -> None:
    date_job = from_flat({"id": "job2", "func": "app.jobs:job1", "name": "job2", "args": [202, 303]})
    assert date_job.trigger.type == "date" and date_job.args == [202, 303]
    one_second = from_flat({"id": "job3", "func": "app.jobs:job1", "trigger": "interval", "args": [802, 903]})
    assert isinstance(one_second.trigger, IntervalTriggerSpec) and one_second.trigger.total_seconds() == 1
    ten = from_flat({"id": "job3", "func": "app.jobs:job1", "seconds": 10, "trigger": "interval"})
    assert ten.trigger.seconds == 10
    cron = from_flat({"id": "job3", "func": "app.jobs:job1", "second": "*/10", "hour": "*", "trigger": "cron",
                      "args": [702, 603]})
    assert isinstance(cron.trigger, CronTriggerSpec) and cron.trigger.fields() == {"second": "*/10", "hour": "*"}


@pytest.mark.parametrize(
    "expression",
    ["*", "*/5", "1-5", "1-10/2", "1,3,5", "2nd mon", "last fri", "last", "1st sun,last sat"],
)
def test_every_apscheduler_day_expression_accepted(expression: str) -> None:
    spec = parse_spec({**BASE, "trigger": {"type": "cron", "day": expression}})
    assert isinstance(build_trigger(spec), CronTrigger)


def test_every_cron_field_accepted() -> None:
    fields = {"year": "2027-2030", "month": "jan-mar", "week": "*/2", "day": "1-15", "day_of_week": "mon-fri",
              "hour": "9-17/2", "minute": "0,30", "second": "15"}
    spec = parse_spec({**BASE, "trigger": {"type": "cron", **fields}})
    trigger = build_trigger(spec, "UTC")
    assert {f.name: str(f) for f in trigger.fields if not f.is_default} == fields


def test_build_trigger_types_and_timezone() -> None:
    spec = parse_spec({**BASE, "timezone": "Asia/Shanghai", "trigger": {"type": "interval", "minutes": 5}})
    trigger = build_trigger(spec, "UTC")
    assert isinstance(trigger, IntervalTrigger) and str(trigger.timezone) == "Asia/Shanghai"
    run_date = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert isinstance(build_trigger(parse_spec({**BASE, "trigger": {"type": "date", "run_date": run_date}})),
                      DateTrigger)


def test_merge_changes_flat_and_nested() -> None:
    spec = from_flat({"id": "j", "func": "m:f", "trigger": "cron", "hour": "3", "minute": "0"})
    changed = merge_changes(spec, {"trigger": "interval", "minutes": 5})
    assert isinstance(changed.trigger, IntervalTriggerSpec) and changed.trigger.minutes == 5
    same_type = merge_changes(spec, {"minute": "15"})
    assert same_type.trigger.fields() == {"minute": "15"}
    nested = merge_changes(spec, {"name": "renamed"})
    assert nested.name == "renamed" and nested.trigger == spec.trigger
    with pytest.raises(SpecError) as info:
        merge_changes(spec, {"hour": "99"})
    assert info.value.fields == ["hour"]


def test_merge_changes_keeps_every_field_it_is_not_given() -> None:
    """Flask-APScheduler's flat dict has no "paused": a PATCH of a paused job's schedule once resumed it."""
    spec = parse_spec({"id": "j", "target": "m:f", "trigger": {"type": "interval", "seconds": 5}, "paused": True,
                       "name": "N", "timeout": 3, "misfire_grace_time": 4, "coalesce": False, "jitter": 2,
                       "max_instances": 3, "description": "d", "tags": ["x"], "timezone": "UTC"})
    for changes in ({"seconds": 6}, {"trigger": "cron", "hour": "3"}, {"name": "M"}):
        merged = merge_changes(spec, changes)
        kept = {name for name in JobSpec.model_fields if name not in ("trigger", "name")}
        assert {name: getattr(merged, name) for name in kept} == {name: getattr(spec, name) for name in kept}, changes
    assert not merge_changes(spec, {"seconds": 6, "paused": False}).paused


# --- properties ------------------------------------------------------------------------------------------------

hour_value = st.one_of(st.sampled_from(["*", "*/5", "1-5", "0,12", "8-18/2"]), st.integers(0, 23).map(str))
minute_value = st.one_of(st.sampled_from(["*", "*/15", "0,30", "10-40/10"]), st.integers(0, 59).map(str))
trigger_specs = st.one_of(
    st.builds(lambda s: {"type": "interval", "seconds": s}, st.integers(1, 86_400)),
    st.builds(lambda h, m: {"type": "interval", "hours": h, "minutes": m}, st.integers(0, 48), st.integers(1, 59)),
    st.builds(lambda h, m: {"type": "cron", "hour": h, "minute": m}, hour_value, minute_value),
    st.builds(
        lambda d: {"type": "date", "run_date": (datetime(2030, 1, 1, tzinfo=timezone.utc) + timedelta(days=d)).isoformat()},
        st.integers(0, 3650),
    ),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=20))
valid_specs = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True),
        "target": st.just("tests.sample_jobs:add"),
        "trigger": trigger_specs,
    },
    optional={
        "name": st.text(min_size=1, max_size=30),
        "args": st.lists(json_scalars, max_size=4),
        "kwargs": st.dictionaries(st.text(min_size=1, max_size=8), json_scalars, max_size=3),
        "timezone": st.sampled_from(["UTC", "Europe/Paris", "Asia/Shanghai", "America/New_York"]),
        "max_instances": st.integers(1, 10),
        "misfire_grace_time": st.integers(1, 3600),
        "coalesce": st.booleans(),
        "paused": st.booleans(),
        "description": st.text(max_size=50),
        "tags": st.lists(st.text(min_size=1, max_size=10), max_size=3),
    },
)


@settings(max_examples=150, deadline=None)
@given(valid_specs)
def test_accepted_specs_round_trip_through_json_and_flat(data: dict) -> None:
    spec = parse_spec(data)
    assert JobSpec.from_json(spec.to_json()) == spec
    flat = to_flat(spec)
    assert from_flat(flat).model_dump(exclude={"paused", "name"}) == spec.model_dump(exclude={"paused", "name"})


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "target", "kind", "trigger", "args", "timezone", "max_instances",
                                        "jitter", "bogus"]),
                       st.one_of(json_scalars, st.lists(json_scalars, max_size=2)), max_size=6))
def test_rejected_specs_always_name_a_field(data: dict) -> None:
    for parse in (parse_spec, from_flat):  # the nested shape and Flask-APScheduler's flat one
        try:
            parse(data)
        except SpecError as exc:
            assert exc.errors and all(e.field and e.reason for e in exc.errors)


def test_specs_loaded_from_rows_share_one_set_of_field_names_and_copies_never_write_to_it() -> None:
    """pydantic keeps each instance's set field names in a set of its own: 3 KB a loaded job (a JobSpec and its
    trigger), 60 % of its memory. A stored row sets every field, so one set per class serves, as long as nothing
    adds to the shared one."""
    rows = [parse_spec({"id": f"j{n}", "target": "tests.sample_jobs:add", "trigger": {"type": "interval",
                                                                                       "seconds": n + 1}}).to_json()
            for n in range(2)]
    first, second = (JobSpec.from_json(row) for row in rows)
    assert first.__pydantic_fields_set__ is second.__pydantic_fields_set__
    assert first.trigger.__pydantic_fields_set__ is second.trigger.__pydantic_fields_set__
    everything = set(JobSpec.model_fields)
    # "ghost": a name no set holds, so that a write to the shared set would show in every loaded spec.
    copied = first.model_copy(update={"paused": True, "ghost": 1})
    assert copied.paused and "ghost" in copied.model_fields_set
    assert second.model_fields_set == everything  # the copy wrote to a set of its own
    # A spec given in part keeps its own record of what was given.
    given = parse_spec({"id": "p", "target": "tests.sample_jobs:add"})
    assert given.model_fields_set == {"id", "target"}
    assert given.model_dump(exclude_unset=True) == {"id": "p", "target": "tests.sample_jobs:add"}


def test_jobs_on_the_same_cron_schedule_share_one_trigger_and_only_they_do() -> None:
    """A CronTrigger costs ~90 µs and 2.4 KB: 9 s and 240 MB at 100,000 jobs built one each."""
    def trigger(job_id: str, **changes: object) -> object:
        return build_trigger(parse_spec({"id": job_id, "target": "tests.sample_jobs:add",
                                         "trigger": {"type": "cron", "expression": "0 3 * * *"}, **changes}), "UTC")

    shared = trigger("a")
    assert trigger("b") is shared
    assert trigger("c", timezone="Europe/Paris") is not shared
    assert trigger("d", start_date="2030-01-01T00:00:00Z") is not shared
    assert trigger("e", jitter=5) is not shared
    other = build_trigger(parse_spec({"id": "f", "target": "tests.sample_jobs:add",
                                      "trigger": {"type": "cron", "expression": "0 4 * * *"}}), "UTC")
    assert other is not shared and str(other) != str(shared)
    # Date and interval triggers built without a start begin from now: never shared.
    interval = {"id": "g", "target": "tests.sample_jobs:add", "trigger": {"type": "interval", "seconds": 5}}
    assert build_trigger(parse_spec(interval)) is not build_trigger(parse_spec(interval))
