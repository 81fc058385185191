"""The jobs screen driven through Pilot at 80x24, over a real engine on a fresh SQLite database.

No mocks: jobs really run (tests.sample_jobs), history is really written, events really flow through the EventBus.
Waits poll a condition with short pauses and a deadline; none sleeps for a fixed time hoping it was enough.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input

from carnation_tui.app import CarnationApp, make_app
from carnation_tui.modals.confirm import ConfirmScreen
from carnation_tui.screens.help import HelpScreen
from carnation_tui.screens.history import HistoryScreen, RunDetailScreen, RunTable
from carnation_tui.widgets.event_log import EventLog
from carnation_tui.widgets.job_table import VirtualTable
from scheduler_core.config import Settings
from scheduler_core.console import Console
from scheduler_core.engine import Engine
from scheduler_core.events import SchedulerEvent

SIZE = (80, 24)
NEVER = {"type": "cron", "expression": "0 0 1 1 *"}  # once a year: never fires during a test
EVERY_SECOND = {"type": "interval", "seconds": 1}


def job(job_id: str, trigger: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "kind": "python", "target": "tests.sample_jobs:add", "args": [1, 2],
            "trigger": trigger or NEVER, **extra}


def screen_text(app: CarnationApp) -> str:
    """What the terminal shows right now, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def table_ids(app: CarnationApp) -> list[str]:
    return [view.id for view in app.table.rows]


async def until(pilot: Pilot[Any], condition: Callable[[], object], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n--- screen ---\n"
                        + screen_text(pilot.app))  # type: ignore[arg-type]
        await pilot.pause(0.05)


@pytest.fixture
def app_settings(sqlite_url: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(sqlite_url, shutdown_timeout=5, poll_interval=0.2)


@asynccontextmanager
async def running(settings: Settings, jobs: list[dict[str, Any]] = (), **kwargs: Any
                  ) -> AsyncIterator[tuple[CarnationApp, Pilot[Any]]]:
    """The app, its engine started, `jobs` added through the facade and shown in the table."""
    app = make_app(settings, **kwargs)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, "the engine to start")
        for spec in jobs:
            app.facade.add_job(spec)
        ids = sorted(spec["id"] for spec in jobs)
        await until(pilot, lambda: table_ids(app) == ids, f"the table to show {ids}")
        yield app, pilot
    assert not app.engine.started, "the engine must be stopped when the app ends"


async def select(pilot: Pilot[Any], app: CarnationApp, job_id: str) -> None:
    app.table.select_key(job_id)
    await until(pilot, lambda: app.table.cursor_key == job_id, f"the cursor on {job_id}")


# --- the screen -------------------------------------------------------------------------------------------------


async def test_status_bar_table_and_footer_fit_80_columns(app_settings: Settings) -> None:
    async with running(app_settings, [job("alpha", name="Alpha job")]) as (app, pilot):
        await until(pilot, lambda: "executing │ 1 job │" in screen_text(app), "the status bar")
        lines = screen_text(app).splitlines()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        assert "0 running" in lines[0] and "errors/h" in lines[0] and "sqlite:" in lines[0]
        header = next(line for line in lines if line.startswith("ID"))
        for title in ("Name", "Kind", "Trigger", "Next run", "Last run", "State"):
            assert title in header
        row = next(line for line in lines if line.startswith("alpha"))
        assert "Alpha job" in row and "python" in row and "scheduled" in row and "in " in row
        # The footer keeps every key hint at 80 columns.
        footer = lines[-1]
        for hint in ("a Add", "e Edit", "p Pause", "r Run", "d Del", "h Hist", "/ Filter", "s Sort", "? Help",
                     "q Quit", "^p"):
            assert hint in footer, f"{hint!r} missing from the footer: {footer!r}"
        # Relative and absolute next run time, in the job's timezone, on the detail line.
        assert any("next 20" in line and "UTC (in " in line for line in lines)


async def test_table_updates_live_when_a_job_runs(app_settings: Settings) -> None:
    async with running(app_settings, [job("ticker", EVERY_SECOND), job("quiet")]) as (app, pilot):
        await select(pilot, app, "quiet")

        def ticker_row() -> str:
            return next((line for line in screen_text(app).splitlines() if line.startswith("ticker")), "")

        assert "ok" not in ticker_row()
        await until(pilot, lambda: " ok " in ticker_row(), "the ticker row to show its last outcome")
        assert app.table.cursor_key == "quiet", "a refresh must not move the cursor"
        # Recorded history, not computed: the outcome shown is the facade's last run.
        view = next(v for v in app.table.rows if v.id == "ticker")
        assert view.last_run is not None and view.last_run.outcome == "success"
        await until(pilot, lambda: any("ticker" in line and "executed" in line
                                       for line in app.event_log.text_lines()), "the run in the event log")


async def test_cursor_keeps_its_job_through_inserts_removals_and_sorts(app_settings: Settings) -> None:
    async with running(app_settings, [job("m-job", name="zz"), job("z-job", name="aa")]) as (app, pilot):
        await pilot.press("down")
        assert app.table.cursor_key == "z-job"
        app.facade.add_job(job("a-job", name="mm"))  # sorts before the selected job
        await until(pilot, lambda: table_ids(app) == ["a-job", "m-job", "z-job"], "the inserted job")
        assert app.table.cursor_key == "z-job" and app.table.cursor == 2
        await pilot.press("s")  # sort by name: z-job (aa) comes first
        await until(pilot, lambda: table_ids(app) == ["z-job", "a-job", "m-job"], "the sort by name")
        assert app.table.cursor_key == "z-job" and app.table.cursor == 0
        app.facade.remove_job("a-job")
        await until(pilot, lambda: table_ids(app) == ["z-job", "m-job"], "the removal")
        assert app.table.cursor_key == "z-job"
        app.facade.update_job("z-job", {"name": "zzz"})  # an edit re-sorts it to the end
        await until(pilot, lambda: table_ids(app) == ["m-job", "z-job"], "the edit")
        assert app.table.cursor_key == "z-job"


async def test_sort_key_cycles_columns_and_shift_s_reverses(app_settings: Settings) -> None:
    async with running(app_settings, [job("b", name="2"), job("a", name="3"), job("c", name="1")]) as (app, pilot):
        await pilot.press("s")
        await until(pilot, lambda: table_ids(app) == ["c", "b", "a"], "sorted by name")
        assert "Name ▲" in screen_text(app)
        await pilot.press("S")
        await until(pilot, lambda: table_ids(app) == ["a", "b", "c"], "sorted by name, descending")
        assert "Name ▼" in screen_text(app)
        for _ in range(6):  # kind, trigger, next, last, state, back to id
            await pilot.press("s")
        await until(pilot, lambda: app.sort_column == "id" and table_ids(app) == ["a", "b", "c"], "back to id")


async def test_click_on_a_header_sorts(app_settings: Settings) -> None:
    async with running(app_settings, [job("b", name="2"), job("a", name="3")]) as (app, pilot):
        x = app.table._columns()[0][1] + 2  # inside the Name column
        await pilot.click("#jobs", offset=(x, 0))
        await until(pilot, lambda: table_ids(app) == ["b", "a"], "sorted by name after a click")


async def test_filter_narrows_rows_and_escape_clears(app_settings: Settings) -> None:
    jobs = [job("alpha"), job("beta", name="Second"), job("gamma", {"type": "interval", "minutes": 5})]
    async with running(app_settings, jobs) as (app, pilot):
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press("b", "e")
        await until(pilot, lambda: table_ids(app) == ["beta"], "the filter on id")
        await pilot.press("escape")
        await until(pilot, lambda: table_ids(app) == ["alpha", "beta", "gamma"], "the filter cleared")
        assert not app.query_one("#filter").display and app.focused is app.table
        await pilot.press("slash", *"second", "enter")  # by name; Enter keeps the filter and returns to the table
        await until(pilot, lambda: table_ids(app) == ["beta"], "the filter on name")
        assert app.focused is app.table
        await pilot.press("escape")
        await pilot.press("slash", *"5 min")  # by trigger words
        await until(pilot, lambda: table_ids(app) == ["gamma"], "the filter on trigger")
        await pilot.press(*"zzz")
        await until(pilot, lambda: "No job matches" in screen_text(app), "the empty-filter hint")


# --- actions on the selected job ------------------------------------------------------------------------------------


async def test_p_pauses_and_resumes(app_settings: Settings) -> None:
    async with running(app_settings, [job("one"), job("two")]) as (app, pilot):
        await select(pilot, app, "two")
        await pilot.press("p")
        await until(pilot, lambda: app.facade.get_job("two").state == "paused", "two paused in the facade")
        await until(pilot, lambda: app.table.cursor_value.state == "paused", "the row to show paused")
        assert app.facade.get_job("one").state == "scheduled"
        await pilot.press("p")
        await until(pilot, lambda: app.facade.get_job("two").state == "scheduled", "two resumed")


async def test_d_then_yes_deletes(app_settings: Settings) -> None:
    async with running(app_settings, [job("keep"), job("gone")]) as (app, pilot):
        await select(pilot, app, "gone")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirm dialog")
        assert "Delete job gone?" in screen_text(app)
        await pilot.press("y")
        await until(pilot, lambda: table_ids(app) == ["keep"], "the row to go")
        assert [v.id for v in app.facade.list_jobs()] == ["keep"]
        assert app.table.cursor_key == "keep"


async def test_d_then_escape_or_enter_keeps_the_job(app_settings: Settings) -> None:
    async with running(app_settings, [job("keep")]) as (app, pilot):
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirm dialog")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the dialog to close")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirm dialog again")
        await pilot.press("enter")  # Cancel has the focus: a stray Enter destroys nothing
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the dialog to close")
        await pilot.pause(0.3)
        assert [v.id for v in app.facade.list_jobs()] == ["keep"]


async def test_r_runs_now_and_h_shows_the_run(app_settings: Settings) -> None:
    async with running(app_settings, [job("later")]) as (app, pilot):
        assert app.facade.history("later").total == 0
        await pilot.press("r")
        await until(pilot, lambda: app.facade.flush(1) and app.facade.history("later").total == 1, "a recorded run")
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history screen")
        runs = app.screen.query_one(RunTable)
        await until(pilot, lambda: len(runs.rows) == 1, "the run in the history table")
        text = screen_text(app)
        assert "History of later" in text and "success" in text and "page 1 of 1" in text
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunDetailScreen), "the run's detail")
        text = screen_text(app)
        assert "returned" in text and "3" in text and "scheduled" in text
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen), "back to the history")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "back to the jobs")


async def test_history_pages_with_n_p_and_page_keys(app_settings: Settings) -> None:
    async with running(app_settings, [job("busy", EVERY_SECOND)]) as (app, pilot):
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history screen")
        screen = app.screen
        assert isinstance(screen, HistoryScreen)
        # Shrink the page so a few real runs make several pages; pause the job so the pages hold still.
        screen.per_page = 2
        await until(pilot, lambda: app.facade.flush(1) and app.facade.history("busy").total >= 5, "five runs",
                    timeout=15)
        app.facade.pause_job("busy")
        await pilot.pause(0.3)
        app.facade.flush(1)
        total = app.facade.history("busy").total
        screen.load()
        runs = screen.query_one(RunTable)
        await until(pilot, lambda: screen.total == total and len(runs.rows) == 2, "the first page of two runs")
        first_page = {runs.row_key(r) for r in runs.rows}
        await pilot.press("n")
        await until(pilot, lambda: screen.page == 2 and {runs.row_key(r) for r in runs.rows}.isdisjoint(first_page),
                    "page 2, other runs")
        assert f"page 2 of {(total + 1) // 2}" in screen_text(app)
        await pilot.press("p")
        await until(pilot, lambda: screen.page == 1, "page 1")
        await pilot.press("pagedown")
        await until(pilot, lambda: screen.page == 2, "page 2 by PageDown")
        await pilot.press("pageup")
        await until(pilot, lambda: screen.page == 1, "page 1 by PageUp")
        # p on the history screen turns a page; it must not toggle the job behind it.
        await pilot.press("p")
        await pilot.pause(0.3)
        assert app.facade.get_job("busy").state == "paused"


async def test_errors_from_the_facade_are_notifications(app_settings: Settings) -> None:
    async with running(app_settings, [job("fine")]) as (app, pilot):
        # A row stored by another process whose target cannot be imported: the engine marks it broken.
        spec = job("broken1", target="no_such_module_xyz:func")
        import json

        app.engine.store.insert_job("broken1", json.dumps(spec), None, False)
        await until(pilot, lambda: table_ids(app) == ["broken1", "fine"], "the broken row")
        await until(pilot, lambda: app.table.rows[0].state == "broken", "the broken state")
        await select(pilot, app, "broken1")
        await pilot.press("p")
        await until(pilot, lambda: any("broken" in n.message for n in app._notifications), "an error notification")
        notification = next(n for n in app._notifications if "broken" in n.message)
        assert notification.severity == "error"
        await pilot.press("r")
        await until(pilot, lambda: sum("broken" in n.message for n in app._notifications) >= 2, "a second one")
        assert app.is_running


# --- screens and dialogs --------------------------------------------------------------------------------------------


async def test_help_lists_every_binding_and_escape_closes(app_settings: Settings) -> None:
    async with running(app_settings, [job("one")]) as (app, pilot):
        await pilot.resize_terminal(120, 80)  # room for the whole list
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        await pilot.pause(0.1)
        text = screen_text(app)
        bindings = [*app.BINDINGS, *VirtualTable.BINDINGS, *EventLog.BINDINGS, *HistoryScreen.BINDINGS,
                    *RunDetailScreen.BINDINGS, *ConfirmScreen.BINDINGS]
        for binding in bindings:
            assert binding.id, f"binding {binding.key} has no id"
            assert binding.id in text, f"help does not list {binding.id}"
        assert all(binding.id for binding in HelpScreen.BINDINGS)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "help to close")


async def test_a_e_and_enter_open_the_job_form_and_saving_selects_the_job(app_settings: Settings) -> None:
    from carnation_tui.modals.job_form import JobFormScreen

    async with running(app_settings, [job("one"), job("two")]) as (app, pilot):
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, JobFormScreen), "the add form")
        form = app.screen
        assert isinstance(form, JobFormScreen) and form.spec is None
        form.query_one("#f-id", Input).value = "new-job"
        form.query_one("#f-target", Input).value = "tests.sample_jobs:add"
        form.query_one("#cron-expression", Input).value = "0 0 1 1 *"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "the form to close on save")
        await until(pilot, lambda: app.table.cursor_key == "new-job", "the cursor on the saved job")

        await select(pilot, app, "two")
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, JobFormScreen), "the edit form")
        assert app.screen.spec is not None and app.screen.spec.id == "two"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "the form to close on Esc")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobFormScreen), "the edit form by Enter")
        assert app.screen.spec is not None and app.screen.spec.id == "two"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "the form to close")
        assert sorted(v.id for v in app.facade.list_jobs()) == ["new-job", "one", "two"]


async def test_command_palette_offers_the_same_actions(app_settings: Settings) -> None:
    async with running(app_settings, [job("one")]) as (app, pilot):
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        await pilot.press(*"pause or resume one")
        await until(pilot, lambda: "Pause or resume one" in screen_text(app), "the command")
        await pilot.press("down", "enter")
        await until(pilot, lambda: app.facade.get_job("one").state == "paused", "paused through the palette")
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette again")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "Esc to close the palette")


async def test_escape_closes_every_screen_and_dialog(app_settings: Settings) -> None:
    async with running(app_settings, [job("one")]) as (app, pilot):
        for key, kind in (("question_mark", HelpScreen), ("d", ConfirmScreen), ("h", HistoryScreen),
                          ("ctrl+p", CommandPalette), ("a", None), ("e", None)):
            await pilot.press(key)
            await until(pilot, lambda: app.screen is not app.screen_stack[0], f"{key} to open something")
            if kind is not None:
                assert isinstance(app.screen, kind)
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is app.screen_stack[0], f"Esc to close what {key} opened")
        assert [v.id for v in app.facade.list_jobs()] == ["one"]


# --- event log, status, database trouble -------------------------------------------------------------------------


async def test_event_log_is_bounded_and_follows_until_scrolled_up(app_settings: Settings) -> None:
    async with running(app_settings, []) as (app, pilot):
        log = app.event_log
        await until(pilot, lambda: log.lines, "the engine's first event")
        for i in range(6000):
            app.engine.events.publish(SchedulerEvent(kind="executed", job_id=f"job{i}", message="1 ms"))
        await until(pilot, lambda: log.text_lines()[-1].endswith("job5999 executed 1 ms"), "the last event")
        assert len(log.lines) == 5000
        assert log.follow and log.scroll_y == log.max_scroll_y
        log.focus()
        await pilot.press("pageup")
        assert not log.follow
        where = log.scroll_y
        for i in range(20):
            app.engine.events.publish(SchedulerEvent(kind="error", job_id="late", message="boom"))
        await until(pilot, lambda: log.text_lines()[-1].endswith("late error boom"), "more events")
        assert not log.follow and log.scroll_y == where - 20, "the lines read stay put while not following"
        assert "End to follow" in (log.border_title or "")
        await pilot.press("end")
        assert log.follow and log.scroll_y == log.max_scroll_y
        app.engine.events.publish(SchedulerEvent(kind="added", job_id="newest"))
        await until(pilot, lambda: log.text_lines()[-1].endswith("newest added"), "the newest event")
        assert log.scroll_y == log.max_scroll_y


async def test_database_unavailable_banner(app_settings: Settings, tmp_path: Path) -> None:
    """For real: the SQLite file disappears (a directory takes its path) and the pool reconnects."""
    async with running(app_settings, [job("one")]) as (app, pilot):
        banner = app.query_one("#db-banner")
        assert not banner.display
        db = Path(app.settings.db_url.removeprefix("sqlite:///"))
        aside = tmp_path / "aside"
        aside.mkdir()
        moved = [Path(f"{db}{suffix}") for suffix in ("", "-wal", "-shm") if Path(f"{db}{suffix}").exists()]
        for path in moved:
            path.rename(aside / path.name)
        db.mkdir()
        app.engine.store.engine.dispose()  # as after a server restart: the next query opens a new connection
        try:
            await until(pilot, lambda: banner.display, "the banner")
            assert "database unavailable" in screen_text(app) and "DB DOWN" in screen_text(app)
            # Still usable: the table and keys work from memory.
            await pilot.press("down", "question_mark", "escape")
            assert table_ids(app) == ["one"]
        finally:
            db.rmdir()
            for path in moved:
                (aside / path.name).rename(path)
            app.engine.store.engine.dispose()
        await until(pilot, lambda: not banner.display, "the banner to go once the database is back")


# --- life cycle -----------------------------------------------------------------------------------------------------


async def test_q_stops_the_engine_and_exits(app_settings: Settings) -> None:
    app = make_app(app_settings)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.ready, "the engine to start")
        app.facade.add_job(job("quick", EVERY_SECOND))
        await until(pilot, lambda: app.facade.history("quick").total or app.engine.last_runs.get("quick"), "a run")
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "the app to exit")
    assert app.return_code == 0
    assert not app.engine.started
    # History was flushed on the way out: a new engine on the same database sees the runs.
    from scheduler_core.console import Console
    from scheduler_core.engine import Engine

    engine = Engine(app_settings)
    engine.start(execute=False)
    try:
        assert Console(engine).history("quick").total >= 1
    finally:
        engine.stop(timeout=0)


async def test_theme_and_resize(app_settings: Settings) -> None:
    async with running(app_settings, [job(f"job{i:03}") for i in range(60)], theme="textual-light") as (app, pilot):
        assert app.theme == "textual-light"
        await pilot.press("end")
        assert app.table.cursor_key == "job059"
        for size in ((120, 40), (60, 15), (80, 24)):
            await pilot.resize_terminal(*size)
            await pilot.pause(0.1)
            lines = screen_text(app).splitlines()
            assert len(lines) == size[1] and any(line.startswith("job059") for line in lines), size
        app.theme = "ansi-dark"  # what a 16-colour terminal gets by default
        await pilot.pause(0.1)
        assert any(line.startswith("job059") for line in screen_text(app).splitlines())


def test_make_app_owns_an_engine_it_has_not_started(app_settings: Settings) -> None:
    """make_app builds without a running loop and owns its engine (started on mount, not before)."""
    app = make_app(app_settings)
    assert app.owns_engine and not app.engine.started
    app.subscription.close()
    app.engine.store.close()


async def test_a_crash_is_logged_and_still_stops_the_engine(app_settings: Settings,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(app_settings)
    with pytest.raises(ZeroDivisionError):
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.ready, "the engine to start")
            app.call_later(lambda: 1 / 0)
            await pilot.pause(0.5)
    assert app.return_code == 1
    crash = next(r for r in caplog.records if r.getMessage() == "the console crashed")
    assert crash.exc_info and crash.exc_info[0] is ZeroDivisionError
    assert not app.engine.started


async def test_ctrl_q_quits_even_from_a_dialog(app_settings: Settings) -> None:
    async with running(app_settings, [job("one")]) as (app, pilot):
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirm dialog")
        await pilot.press("q")  # a plain q in a dialog does not quit
        await pilot.pause(0.2)
        assert app.is_running and isinstance(app.screen, ConfirmScreen)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running, "the app to exit")


async def test_run_detail_shows_exception_traceback_exit_code_and_output(app_settings: Settings) -> None:
    shell = {"id": "shell", "kind": "shell", "target": "echo hello from shell; exit 3", "trigger": NEVER}
    async with running(app_settings, [job("failing", target="tests.sample_jobs:fail", args=["boom"]), shell]) as (app, pilot):
        await pilot.resize_terminal(120, 60)
        for job_id, expected in (("failing", ("error", "ValueError: boom", "Traceback", "sample_jobs.py")),
                                 ("shell", ("error", "exit code", "3", "hello from shell"))):
            await select(pilot, app, job_id)
            await pilot.press("r")
            await until(pilot, lambda: app.facade.flush(1) and app.facade.history(job_id).total == 1, "the run")
            await pilot.press("h")
            await until(pilot, lambda: isinstance(app.screen, HistoryScreen), "the history")
            await until(pilot, lambda: len(app.screen.query_one(RunTable).rows) == 1, "the run listed")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, RunDetailScreen), "the detail")
            await pilot.pause(0.1)
            text = screen_text(app)
            for part in expected:
                assert part in text, f"{part!r} missing from the detail of {job_id}:\n{text}"
            await pilot.press("escape", "escape")
            await until(pilot, lambda: app.screen is app.screen_stack[0], "back to the jobs")


async def test_jobs_and_banner_update_behind_an_open_dialog(app_settings: Settings) -> None:
    """A refresh that lands while the help screen is open updates the jobs screen underneath, not the dialog
    (App.query_one looks in the active screen: it used to crash the console here)."""
    async with running(app_settings, [job("one")]) as (app, pilot):
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        app.facade.add_job(job("two"))
        await until(pilot, lambda: table_ids(app) == ["one", "two"], "the table behind the dialog to update")
        app._show_banner("database unavailable")
        assert app.db_banner.display
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0], "the help screen to close")
        assert "database unavailable" in screen_text(app)


async def test_the_first_load_of_the_jobs_is_frozen_out_of_full_collections(app_settings: Settings) -> None:
    """The console's views live as long as the app; a full collection walking them took 100-150 ms at 100,000 jobs,
    keys and the scheduler loop waiting (bench/README.md, F30; console.py freezes them)."""
    seed = Engine(app_settings)
    seed.start(execute=False)
    Console(seed).add_job(job("kept"))
    seed.stop()
    gc.unfreeze()
    app = make_app(app_settings)
    async with app.run_test(size=SIZE) as pilot:
        view = await until(pilot, lambda: app.views and app.views[0], "the first load")
        assert view.id == "kept" and gc.is_tracked(view)
        assert not any(obj is view for obj in gc.get_objects())
