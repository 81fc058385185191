"""The job form and its cron editor, driven through Pilot at 80x24 against a real SQLite-backed console."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Button, Input

from carnation_tui.modals.job_form import JobFormScreen
from carnation_tui.widgets.cron_editor import FieldMessage, SchedulePreview
from scheduler_core.config import Settings
from scheduler_core.console import Console
from scheduler_core.engine import Engine
from scheduler_core.spec import JobSpec, parse_spec

SIZE = (80, 24)


@pytest.fixture
def console(sqlite_url: str, make_settings: Callable[..., Settings]) -> Iterator[Console]:
    # SQLite only: the form's logic does not depend on the database, and the conftest console runs on all three.
    eng = Engine(make_settings(sqlite_url))
    eng.start()
    yield Console(eng)
    if eng.started:
        eng.stop(timeout=5)
    eng.store.close()


class FormHost(App[None]):
    """A bare app whose only job is to show the form; `results` collects what it dismisses with."""

    def __init__(self, jobs: Console, spec: JobSpec | None = None) -> None:
        super().__init__()
        self.jobs = jobs  # not `console`: App.console is Rich's
        self.spec = spec
        self.results: list[str | None] = []

    def on_mount(self) -> None:
        self.push_screen(JobFormScreen(self.jobs, self.spec), self.results.append)


async def until(pilot: Pilot[Any], condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.02)


async def opened(pilot: Pilot[Any]) -> JobFormScreen:
    await until(pilot, lambda: isinstance(pilot.app.screen, JobFormScreen), "the form")
    screen = pilot.app.screen
    assert isinstance(screen, JobFormScreen)
    await until(pilot, lambda: screen.query("#cron-preview"), "the form to compose")
    await pilot.pause()
    return screen


async def type_into(pilot: Pilot[Any], screen: JobFormScreen, selector: str, text: str) -> None:
    """Focus an input, clear it and type `text` key by key, as an operator would."""
    widget = screen.query_one(selector, Input)
    widget.focus()
    widget.value = ""
    await pilot.press(*text)


def set_value(screen: JobFormScreen, selector: str, value: Any) -> None:
    screen.query_one(selector).value = value  # type: ignore[attr-defined]


def error_text(screen: JobFormScreen, selector: str) -> str:
    """The message shown beside a field ("" when there is none; messages are created on first use)."""
    found = screen.query(selector)
    if not found:
        return ""
    label = found.only_one(FieldMessage)
    assert label.display == bool(label.text), "a message is shown exactly when it has text"
    return label.text


def summary(screen: JobFormScreen) -> str:
    return error_text(screen, "#job-form-summary")


async def save(pilot: Pilot[Any], screen: JobFormScreen) -> None:
    """Ctrl+S, then wait for either the dismissal or the refusal."""
    await pilot.press("ctrl+s")
    app = pilot.app
    await until(pilot, lambda: app.results or (summary(screen) and not screen._saving), "save to finish")


async def refused(pilot: Pilot[Any], screen: JobFormScreen) -> str:
    await save(pilot, screen)
    assert pilot.app.results == [], "the form should have stayed open"  # type: ignore[attr-defined]
    return summary(screen)


def visible(screen: JobFormScreen, selector: str) -> bool:
    return screen.query_one(selector).display


# --- adding --------------------------------------------------------------------------------------------------------
KINDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # kind: (what to put in the widgets, what the stored spec must hold)
    "python": (
        {"#f-target": "tests.sample_jobs:add", "#f-args": "[2, 3]", "#f-kwargs": ""},
        {"target": "tests.sample_jobs:add", "args": [2, 3]},
    ),
    "shell": (
        {"#f-target": "echo hi", "#f-timeout": "5"},
        {"target": "echo hi", "timeout": 5},
    ),
    "http": (
        {"#f-target": "http://127.0.0.1:9/x", "#f-method": "POST", "#f-headers": '{"X-Token": "t"}',
         "#f-body": "hello", "#f-timeout": "2.5"},
        {"target": "http://127.0.0.1:9/x", "method": "POST", "headers": {"X-Token": "t"}, "body": "hello",
         "timeout": 2.5},
    ),
}
TRIGGERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cron": ({"#cron-expression": "*/5 * * * *"}, {"type": "cron", "expression": "*/5 * * * *"}),
    "interval": ({"#f-hours": "1", "#f-minutes": "30"}, {"type": "interval", "hours": 1, "minutes": 30}),
    "date": ({"#f-run_date": "2099-01-02T09:30:00"}, {"type": "date", "run_date": "2099-01-02T09:30:00"}),
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
@pytest.mark.parametrize("kind", list(KINDS))
async def test_add_each_kind_with_each_trigger(console: Console, kind: str, trigger: str) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", f"{kind}-{trigger}")
        set_value(screen, "#f-kind", kind)
        set_value(screen, "#f-trigger", trigger)
        await pilot.pause()
        # Only the chosen kind's and trigger's fields are shown.
        assert visible(screen, "#f-args") == visible(screen, "#l-args") == (kind != "http")
        assert visible(screen, "#f-method") == visible(screen, "#l-method") == (kind == "http")
        assert visible(screen, "#f-body") == (kind == "http")
        assert visible(screen, "#cron-editor") == (trigger == "cron")
        assert visible(screen, "#group-interval") == (trigger == "interval")
        assert visible(screen, "#group-date") == (trigger == "date")
        widgets, expected = KINDS[kind]
        trigger_widgets, expected_trigger = TRIGGERS[trigger]
        for selector, value in {**widgets, **trigger_widgets}.items():
            if selector == "#f-body":
                screen.query_one(selector).text = value  # type: ignore[attr-defined]
            else:
                set_value(screen, selector, value)
        await save(pilot, screen)
        assert app.results == [f"{kind}-{trigger}"], summary(screen)

    stored = console.get_spec(f"{kind}-{trigger}")
    assert stored == parse_spec({
        "id": f"{kind}-{trigger}", "kind": kind, **expected, "trigger": expected_trigger, "timezone": "UTC",
    })
    assert [view.id for view in console.list_jobs()] == [f"{kind}-{trigger}"]


# --- the cron editor, live -----------------------------------------------------------------------------------------
async def test_cron_out_of_range_shows_while_typing_and_save_stores_nothing(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "minutely")
        set_value(screen, "#f-target", "tests.sample_jobs:add")
        await type_into(pilot, screen, "#cron-expression", "61 * * * *")
        # Shown while typing: nothing saved, no summary yet, the reason right under the expression.
        await until(pilot, lambda: "minute: 61 is out of range 0-59" in error_text(screen, "#cron-expression-error"),
                    "the minute error under the expression")
        assert summary(screen) == ""
        assert screen.query_one("#cron-preview", SchedulePreview).times == []

        text = await refused(pilot, screen)
        assert "trigger.expression: minute: 61 is out of range 0-59" in text
        assert "minute: 61 is out of range 0-59" in error_text(screen, "#cron-expression-error")
        assert console.list_jobs() == []
        # Fixing it clears the error live.
        set_value(screen, "#cron-expression", "59 * * * *")
        await until(pilot, lambda: error_text(screen, "#cron-expression-error") == "", "the error to clear")
    assert console.list_jobs() == []


async def test_cron_expression_describes_and_previews_in_job_timezone(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-timezone", "Europe/Paris")
        preview = screen.query_one("#cron-preview", SchedulePreview)
        await type_into(pilot, screen, "#cron-expression", "*/5 * * * *")
        await until(pilot, lambda: preview.description == "Every 5 minutes", "the description")
        assert len(preview.times) == 5
        assert all(t.tzinfo is not None and getattr(t.tzinfo, "key", "") == "Europe/Paris" for t in preview.times)
        assert all(b - a == timedelta(minutes=5) for a, b in zip(preview.times, preview.times[1:]))
        assert all(t.minute % 5 == 0 and t.second == 0 for t in preview.times)
        assert "Next 5 runs (Europe/Paris)" in str(preview.render())
        # The preview follows the job's timezone as it changes.
        set_value(screen, "#f-timezone", "Asia/Tokyo")
        await until(pilot, lambda: preview.times and getattr(preview.times[0].tzinfo, "key", "") == "Asia/Tokyo",
                    "times in the new timezone")


async def test_cron_six_fields_seconds_first(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "ten-seconds")
        set_value(screen, "#f-kind", "shell")
        set_value(screen, "#f-target", "echo hi")
        preview = screen.query_one("#cron-preview", SchedulePreview)
        await type_into(pilot, screen, "#cron-expression", "*/10 * * * * *")
        await until(pilot, lambda: preview.description == "Every 10 seconds", "the seconds description")
        assert all(b - a == timedelta(seconds=10) for a, b in zip(preview.times, preview.times[1:]))
        assert len(preview.times) == 5
        await save(pilot, screen)
        assert app.results == ["ten-seconds"], summary(screen)
    assert console.get_spec("ten-seconds").trigger.expression == "*/10 * * * * *"  # type: ignore[union-attr]


async def test_apscheduler_fields_hour_error_and_last_friday(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "last-friday")
        set_value(screen, "#f-target", "tests.sample_jobs:add")
        set_value(screen, "#cron-mode", "fields")
        await pilot.pause()
        assert not visible(screen, "#cron-expression-box") and visible(screen, "#cron-fields-box")
        await type_into(pilot, screen, "#cron-hour", "25")
        await until(pilot, lambda: "25" in error_text(screen, "#cron-hour-error"), "the error under hour")
        assert error_text(screen, "#cron-day-error") == ""

        text = await refused(pilot, screen)
        assert "trigger.hour" in text
        assert console.list_jobs() == []

        set_value(screen, "#cron-hour", "3")
        set_value(screen, "#cron-day", "last fri")
        preview = screen.query_one("#cron-preview", SchedulePreview)
        await until(pilot, lambda: len(preview.times) == 5, "the preview")
        assert error_text(screen, "#cron-hour-error") == "" and error_text(screen, "#cron-day-error") == ""
        for when in preview.times:
            assert when.weekday() == 4 and when.hour == 3 and (when + timedelta(days=7)).month != when.month
        await save(pilot, screen)
        assert app.results == ["last-friday"], summary(screen)
    trigger = console.get_spec("last-friday").trigger
    assert trigger.type == "cron" and trigger.fields() == {"day": "last fri", "hour": "3"}  # type: ignore[union-attr]


# --- errors on save --------------------------------------------------------------------------------------------------
async def test_bad_json_args_names_args_and_stores_nothing(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "json")
        set_value(screen, "#f-target", "tests.sample_jobs:add")
        set_value(screen, "#cron-expression", "0 * * * *")
        await type_into(pilot, screen, "#f-args", "[1, 2")
        # Live, under the field being typed.
        await until(pilot, lambda: "not valid JSON" in error_text(screen, "#e-args"), "the args error")
        text = await refused(pilot, screen)
        assert text.startswith("Not saved") and "args: is not valid JSON" in text
        assert screen.focused is screen.query_one("#f-args")
        set_value(screen, "#f-args", '{"a": 1}')
        text = await refused(pilot, screen)
        assert "args: must be a JSON list" in text
    assert console.list_jobs() == []


async def test_unresolvable_python_reference_shown_at_target(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "job6")
        set_value(screen, "#f-target", "tests.sample_jobs:job6")
        set_value(screen, "#cron-expression", "0 * * * *")
        text = await refused(pilot, screen)
        message = "Error resolving reference tests.sample_jobs:job6: error looking up object"
        assert message in error_text(screen, "#e-target")
        assert message in text
        # The console's verdict stays beside the target until the target changes.
        set_value(screen, "#f-name", "renamed")
        await pilot.pause(0.2)
        assert message in error_text(screen, "#e-target")
        set_value(screen, "#f-target", "tests.sample_jobs:add")
        await until(pilot, lambda: error_text(screen, "#e-target") == "", "the target error to clear")
    assert console.list_jobs() == []


async def test_duplicate_id_refused_and_stored_job_unchanged(console: Console) -> None:
    original = console.add_job({"id": "dup", "target": "tests.sample_jobs:add", "args": [1, 2],
                                "trigger": {"type": "interval", "hours": 1}}).spec
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "dup")
        set_value(screen, "#f-kind", "shell")
        set_value(screen, "#f-target", "echo other")
        set_value(screen, "#cron-expression", "0 * * * *")
        text = await refused(pilot, screen)
        assert "conflicts with an existing job" in error_text(screen, "#e-id")
        assert "id: Job identifier (dup) conflicts" in text
    assert console.get_spec("dup") == original
    assert [view.id for view in console.list_jobs()] == ["dup"]


# --- editing -----------------------------------------------------------------------------------------------------------
ROUND_TRIP_SPECS = [
    {"id": "py", "name": "Adder", "target": "tests.sample_jobs:add", "args": [1, 2.5], "kwargs": {},
     "trigger": {"type": "cron", "day_of_week": "mon-fri", "hour": "9", "minute": "30"},
     "timezone": "Europe/Paris", "start_date": "2030-01-01T00:00:00+01:00", "misfire_grace_time": 30,
     "coalesce": False, "max_instances": 3, "jitter": 5, "paused": True, "tags": ["a", "b"],
     "description": "two\nlines", "timeout": 12.5},
    {"id": "sh", "kind": "shell", "target": "echo", "args": ["a b"], "kwargs": {"FOO": 3},
     "trigger": {"type": "cron", "expression": "*/10 * * * * *"}, "coalesce": True, "end_date": "2099-01-01T00:00:00"},
    {"id": "web", "kind": "http", "target": "http://127.0.0.1:9/x", "method": "PUT", "headers": {"A": "b"},
     "body": '{"x": 1}\n', "trigger": {"type": "interval", "weeks": 1, "seconds": 5}, "timeout": 3},
    {"id": "once", "kind": "shell", "target": "true", "trigger": {"type": "date", "run_date": "2099-05-01T10:00:00Z"},
     "name": ""},
]


@pytest.mark.parametrize("data", ROUND_TRIP_SPECS, ids=[d["id"] for d in ROUND_TRIP_SPECS])
async def test_edit_without_changes_round_trips(console: Console, data: dict[str, Any]) -> None:
    original = console.add_job(data).spec
    assert original is not None
    app = FormHost(console, original)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        assert screen.query_one("#f-id", Input).disabled
        assert screen.validate() == (original, [])
        await save(pilot, screen)
        assert app.results == [original.id], summary(screen)
    assert console.get_spec(original.id) == original


async def test_edit_saves_changes_and_dismisses_with_id(console: Console) -> None:
    original = console.add_job({"id": "nightly", "target": "tests.sample_jobs:add", "args": [1, 2],
                                "trigger": {"type": "cron", "expression": "0 3 * * *"}}).spec
    assert original is not None
    app = FormHost(console, original)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        id_input = screen.query_one("#f-id", Input)
        assert id_input.disabled and not id_input.focusable and id_input.value == "nightly"
        assert screen.query_one("#job-form").border_title == "Edit job nightly"
        preview = screen.query_one("#cron-preview", SchedulePreview)
        await until(pilot, lambda: preview.description == "At 03:00", "the stored schedule's description")
        set_value(screen, "#f-name", "Nightly adder")
        set_value(screen, "#cron-expression", "30 4 * * *")
        await until(pilot, lambda: preview.description == "At 04:30", "the new description")
        await save(pilot, screen)
        assert app.results == ["nightly"], summary(screen)
    stored = console.get_spec("nightly")
    assert stored.name == "Nightly adder"
    assert stored.trigger.expression == "30 4 * * *"  # type: ignore[union-attr]
    assert stored.args == [1, 2]
    assert [view.id for view in console.list_jobs()] == ["nightly"]


# --- leaving and the keyboard ------------------------------------------------------------------------------------------
async def test_escape_dismisses_with_none_and_stores_nothing(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "never")
        set_value(screen, "#f-target", "tests.sample_jobs:add")
        set_value(screen, "#cron-expression", "* * * * *")
        await pilot.press("escape")
        await until(pilot, lambda: app.results, "the form to close")
        assert app.results == [None]
        assert not isinstance(app.screen, JobFormScreen)
    assert console.list_jobs() == []


async def test_cancel_button_dismisses_with_none(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        screen.query_one("#cancel", Button).press()
        await until(pilot, lambda: app.results, "the form to close")
        assert app.results == [None]
    assert console.list_jobs() == []


async def test_keyboard_only_at_80x24(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        body = screen.query_one("#job-form-body")
        assert body.max_scroll_x == 0, "the form must fit in 80 columns"
        assert screen.focused is screen.query_one("#f-id")
        await pilot.press(*"kb", "tab", "tab")  # id, then name, then kind
        assert screen.focused is screen.query_one("#f-kind")
        await pilot.press("enter", "down", "enter")  # open the kind list: python -> shell
        await until(pilot, lambda: screen.kind == "shell", "the kind to change")
        await pilot.press("tab", *"echo hi")
        assert screen.query_one("#f-target", Input).value == "echo hi"
        # Tab on to the cron expression; the focused field always scrolls into view.
        for _ in range(10):
            if screen.focused is screen.query_one("#cron-expression"):
                break
            await pilot.press("tab")
        assert screen.focused is screen.query_one("#cron-expression")
        await pilot.press(*"0 * * * *")
        # Tab to Save, however many fields are in between, and press it with Enter.
        save_button = screen.query_one("#save", Button)
        for _ in range(40):
            if screen.focused is save_button:
                break
            await pilot.press("tab")
        assert screen.focused is save_button
        assert screen.region.contains_region(save_button.region), "Save must be on screen at 80x24"
        await pilot.press("enter")
        await until(pilot, lambda: app.results, "the save")
        assert app.results == ["kb"], summary(screen)
    stored = console.get_spec("kb")
    assert (stored.kind, stored.target, stored.trigger.expression) == ("shell", "echo hi", "0 * * * *")  # type: ignore[union-attr]


async def test_ctrl_s_saves_from_any_field(console: Console) -> None:
    app = FormHost(console)
    async with app.run_test(size=SIZE) as pilot:
        screen = await opened(pilot)
        set_value(screen, "#f-id", "quick")
        set_value(screen, "#f-target", "tests.sample_jobs:add")
        set_value(screen, "#cron-expression", "0 9 * * mon-fri")
        screen.query_one("#cron-expression").focus()
        await pilot.pause()
        # Focus is deep in the form (inside the cron editor); Ctrl+S still saves.
        assert screen.focused is screen.query_one("#cron-expression")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.results, "the save")
        assert app.results == ["quick"], summary(screen)
    assert console.get_spec("quick").trigger.expression == "0 9 * * mon-fri"  # type: ignore[union-attr]
