"""CarnationApp: the jobs screen, the embedded engine, and the glue between them.

Threads: the engine's own threads publish events into a Subscription; a 10 Hz timer on the UI thread drains it
and applies each batch in one update. Every facade call runs in a thread worker that posts a message back
(messages.py); only message handlers touch widgets. A failing call becomes a notification, never a crash.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import CommandPalette
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.theme import BUILTIN_THEMES
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState, get_current_worker

from scheduler_core.config import Settings
from scheduler_core.console import Console, JobView, Status
from scheduler_core.describe import format_relative
from scheduler_core.engine import Engine
from scheduler_core.errors import CarnationError
from scheduler_core.events import SchedulerEvent
from scheduler_core.store import redact_url

from .commands import JobCommands
from .messages import (
    ActionDone,
    EngineFailed,
    EngineStarted,
    EngineStopped,
    JobsLoaded,
    StatusLoaded,
    WorkerFailed,
)
from .modals.confirm import ConfirmScreen
from .screens.help import HelpScreen
from .screens.history import HistoryScreen, RunDetailScreen
from .widgets.event_log import EventLog
from .widgets.job_table import WIDE, JobTable, VirtualTable, compute_rows, job_zone, outcome_text
from .widgets.status_bar import StatusBar

log = logging.getLogger("carnation.tui")

REFRESH_SECONDS = 1.0
# An executing engine publishes an event for every change it makes or applies, so a quiet second needs no reload
# (just a re-render: relative times move). Reload anyway this long after the last job event (some state lands
# just after its event) and at least this often, as a safety net.
SETTLE_SECONDS = 2.0
SNAPSHOT_MAX_AGE = 10.0
LOAD_SPACING = 3.0  # idle time between two loads, in multiples of the last load's cost
DRAIN_SECONDS = 0.1
STATUS_SECONDS = 5.0  # status() lists every job again; counts come from each refresh, errors trigger one
EVENT_LOG_LINES = 5000
UI_SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005
# Events that change what the table shows: they trigger a refresh sooner than the 1 s timer.
JOB_EVENT_KINDS = frozenset({"added", "modified", "removed", "executed", "error", "missed", "skipped", "submitted",
                             "paused", "resumed", "broken", "all jobs removed"})
# Actions about the selected job or the jobs table: only on the jobs screen itself.
JOB_ACTIONS = frozenset({"add_job", "edit_job", "toggle_pause", "run_job", "delete_job", "history", "filter",
                         "sort", "sort_reverse", "escape"})
SORT_TITLES = {"id": "id", "name": "name", "kind": "kind", "trigger": "trigger", "next": "next run",
               "last": "last run", "state": "state"}


def job_counts(views: list[JobView]) -> tuple[int, int, int, int]:
    """(jobs, paused, broken, running), counted in the worker: 100,000 views are too many for the UI thread."""
    paused = broken = running = 0
    for view in views:
        paused += view.state == "paused"
        broken += view.state == "broken"
        running += view.running
    return len(views), paused, broken, running


class CarnationApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "carnation"
    COMMANDS = App.COMMANDS | {JobCommands}

    # One table of keys: the footer, the help screen and the command palette are all built from it.
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("a", "add_job", "Add", tooltip="Add a job", id="job.add"),
        Binding("e", "edit_job", "Edit", tooltip="Edit the selected job (Enter does too)", id="job.edit"),
        Binding("p", "toggle_pause", "Pause", tooltip="Pause or resume the selected job", id="job.pause"),
        Binding("r", "run_job", "Run", tooltip="Run the selected job now", id="job.run"),
        Binding("d", "delete_job", "Del", tooltip="Delete the selected job (asks first)", id="job.delete"),
        Binding("h", "history", "Hist", tooltip="Run history of the selected job", id="job.history"),
        Binding("slash", "filter", "Filter", key_display="/", tooltip="Filter by id, name, kind or trigger",
                id="jobs.filter"),
        Binding("s", "sort", "Sort", tooltip="Sort by the next column (or click a header)", id="jobs.sort"),
        Binding("S", "sort_reverse", "Reverse", show=False, tooltip="Reverse the sort order",
                id="jobs.sort-reverse"),
        Binding("escape", "escape", "Clear", show=False, tooltip="Clear the filter", id="jobs.clear-filter"),
        Binding("tab", "focus_next", "Next pane", show=False, tooltip="Next pane: the table, the event log",
                id="app.focus-next"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="Every key", id="app.help"),
        Binding("q", "quit", "Quit", tooltip="Stop the scheduler gracefully and quit", id="app.quit"),
        Binding("ctrl+q", "quit_anywhere", "Quit", show=False, priority=True,
                tooltip="Quit from anywhere, even a dialog", id="app.quit-anywhere"),
        Binding("ctrl+p", "command_palette", "Cmds", show=False, key_display="^p", priority=True,
                tooltip="Command palette: every action by name", id="app.palette"),
    ]

    table: JobTable
    event_log: EventLog
    status_bar: StatusBar

    def __init__(self, settings: Settings, engine: Engine | None = None, theme: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.owns_engine = engine is None
        self.engine = engine if engine is not None else Engine(settings)
        self.facade = Console(self.engine)
        # Subscribe before starting, so "scheduler started" is the log's first line.
        self.subscription = self.facade.subscribe(maxlen=20_000)
        self.timezone = settings.timezone
        self.ready = False
        self.stopping = False
        self.views: list[JobView] = []
        self.status: Status | None = None
        self.filter_text = ""
        self.sort_column = "id"
        self.sort_reverse = False
        self.pending_cursor: str | None = None  # a job just saved: select it when it shows up
        self._dropped_seen = 0
        self._refresh_wanted = False
        self._refresh_started = 0.0
        self._refresh_cost = 0.0
        self._last_refresh_end = 0.0
        self._last_load_started = 0.0
        self._changed_until = 0.0
        self._status_busy = False
        self._status_wanted = False
        self.counts: tuple[int, int, int, int] | None = None
        if theme:
            self.theme = theme

    # --- layout ------------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Static("", id="db-banner", markup=False)
        yield Input(placeholder="filter by id, name, kind or trigger — Enter keeps it, Esc clears", id="filter")
        with Vertical(id="jobs-pane"):
            yield JobTable(self.timezone, id="jobs")
            yield Static("", id="job-detail", markup=False)
        yield EventLog(self.timezone, EVENT_LOG_LINES, id="events")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        # Kept, not queried: the drain timer and every refresh use them, and App.query_one looks in the active
        # screen, where a dialog or the command palette open over the jobs has none of these.
        self.table = self.query_one("#jobs", JobTable)
        self.event_log = self.query_one("#events", EventLog)
        self.status_bar = self.query_one(StatusBar)
        self.job_detail = self.query_one("#job-detail", Static)
        self.db_banner = self.query_one("#db-banner", Static)
        self.filter_box = self.query_one("#filter", Input)
        self.table.empty_text = "Loading jobs…"
        self.table.focus()
        self.set_interval(DRAIN_SECONDS, self.drain_events)

    def on_ready(self) -> None:
        # After the first frame: loading 100,000 jobs in a worker would otherwise compete with it for the GIL.
        self._start_engine()

    # --- engine life cycle -----------------------------------------------------------------------------------------
    @work(thread=True, group="engine", exit_on_error=False)
    def _start_engine(self) -> None:
        try:
            if not self.engine.started:
                self.engine.start()
        except Exception as exc:
            log.exception("the scheduler could not start")
            self.post_message(EngineFailed(f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(EngineStarted(self.engine, self.facade))

    @on(EngineStarted)
    def _engine_started(self, _message: EngineStarted) -> None:
        self.ready = True
        self.refresh_jobs()
        self.refresh_status()
        self.set_interval(REFRESH_SECONDS, self._tick)
        self.set_interval(STATUS_SECONDS, self.refresh_status)

    @on(EngineFailed)
    def _engine_failed(self, message: EngineFailed) -> None:
        self._show_banner(f"⚠ the scheduler could not start: {message.error}")
        self.status_bar.show(None, "not running — q quits")
        self.notify(message.error, title="Scheduler not started", severity="error", timeout=30)

    async def action_quit(self) -> None:
        self._quit_gracefully()

    def action_quit_anywhere(self) -> None:
        self._quit_gracefully()

    def _quit_gracefully(self) -> None:
        """Stop the engine (running jobs end or time out, history is written) off the UI thread, then exit."""
        if self.stopping:
            self.notify("still stopping: waiting for running jobs", timeout=3)
            return
        self.stopping = True
        if not self.engine.started:
            self.exit(0)
            return
        running = self.engine.running_count()
        if running:
            self.notify(f"waiting for {running} running job(s) to finish (at most "
                        f"{self.settings.shutdown_timeout:g} s)…", title="Stopping", timeout=60)
        self.status_bar.show(self.status, "stopping…")
        self._stop_engine()

    @work(thread=True, group="engine", exit_on_error=False)
    def _stop_engine(self) -> None:
        finished = True
        try:
            if self.owns_engine and self.engine.started:
                finished = self.engine.stop()
        except Exception:
            log.exception("error while stopping the scheduler")
        self.post_message(EngineStopped(finished))

    @on(EngineStopped)
    def _engine_stopped(self, _message: EngineStopped) -> None:
        self.exit(0)

    def on_unmount(self) -> None:
        self.subscription.close()
        # Leaving without `q` (a test ending, ctrl+q, a crash): still stop the engine we own, gracefully.
        if self.owns_engine and self.engine.started:
            try:
                self.engine.stop()
            except Exception:
                log.exception("error while stopping the scheduler")

    def _handle_exception(self, error: Exception) -> None:
        # Textual restores the terminal and prints the traceback; the log file keeps it for later.
        log.critical("the console crashed", exc_info=error)
        super()._handle_exception(error)

    # --- events ------------------------------------------------------------------------------------------------
    def drain_events(self) -> None:
        """10 times a second: everything the engine published since, applied in one update."""
        batch: list[SchedulerEvent | str] = list(self.subscription.drain())
        dropped = self.subscription.dropped
        if dropped != self._dropped_seen:
            batch.append(f"… {dropped - self._dropped_seen:,} events dropped (the console fell behind)")
            self._dropped_seen = dropped
        if not batch:
            return
        self.event_log.add_events(batch)
        if any(isinstance(e, SchedulerEvent) and (e.kind in JOB_EVENT_KINDS or e.kind == "database")
               for e in batch):
            self._changed_until = time.monotonic() + SETTLE_SECONDS
            self.refresh_jobs(soon=True)
        if any(isinstance(e, SchedulerEvent) and e.kind == "database" for e in batch):
            self.refresh_status()

    # --- jobs snapshot -------------------------------------------------------------------------------------------
    def _tick(self) -> None:
        """Every second: reload the jobs if anything may have changed, else only re-render the table."""
        now = time.monotonic()
        if (not self.engine.executing or now < self._changed_until
                or now - self._last_load_started > SNAPSHOT_MAX_AGE):
            self.refresh_jobs()
        else:
            self.table.invalidate()
            self._show_detail()

    def refresh_jobs(self, soon: bool = False) -> None:
        """Ask for a fresh snapshot. At most one load runs at a time; a request meanwhile is kept for after.
        Loads are spaced by LOAD_SPACING times their cost, so the worker holds the GIL at most a quarter of the
        time and keys stay quick with 100,000 jobs (a load every ~1.1 s there; every second with few jobs)."""
        if not self.ready:
            return
        if self._refresh_started:
            self._refresh_wanted = True
            return
        if time.monotonic() - self._last_refresh_end < max(0.2 if soon else 0.0, self._load_gap()):
            self._refresh_wanted = True
            return
        self._refresh_wanted = False
        self._refresh_started = self._last_load_started = time.monotonic()
        self._load_jobs(self._query())

    def _load_gap(self) -> float:
        # Capped: the first, cold load of 100,000 jobs is far slower than the warm ones after it.
        return min(5.0, LOAD_SPACING * self._refresh_cost)

    def _query(self) -> tuple[str, str, bool]:
        return (self.filter_text, self.sort_column, self.sort_reverse)

    @work(thread=True, exclusive=True, group="jobs", exit_on_error=False)
    def _load_jobs(self, query: tuple[str, str, bool]) -> None:
        try:
            views = self.facade.list_jobs()
            rows, index = compute_rows(views, *query)
        except Exception as exc:
            log.warning("cannot list jobs: %s", exc)
            self.post_message(WorkerFailed("refresh", str(exc)))
            return
        self.post_message(JobsLoaded(views, rows, index, query, job_counts(views)))

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if event.worker.group == "status":
            self._status_busy = False
            if self._status_wanted:
                self.refresh_status()
        elif event.worker.group == "jobs":
            # A load is over however it ended: the next may start (and its cost paces event-driven refreshes).
            if self._refresh_started:
                self._refresh_cost = time.monotonic() - self._refresh_started
            self._refresh_started = 0.0
            self._last_refresh_end = time.monotonic()
            if self._refresh_wanted:
                self.set_timer(max(0.2, self._load_gap()), lambda: self.refresh_jobs(soon=True))

    @work(thread=True, exclusive=True, group="rows", exit_on_error=False)
    def _recompute_rows(self, views: list[JobView], query: tuple[str, str, bool]) -> None:
        """A new filter or sort on the last snapshot: no database, still off the UI thread."""
        rows, index = compute_rows(views, *query)
        if not get_current_worker().is_cancelled:
            self.post_message(JobsLoaded(views, rows, index, query, job_counts(views)))

    @on(JobsLoaded)
    def _jobs_loaded(self, message: JobsLoaded) -> None:
        self.views = message.views
        if message.counts != self.counts:
            # Counted from the snapshot the table shows, so the bar and the table always agree.
            self.counts = message.counts
            self.status_bar.show_counts(*message.counts)
        if message.query != self._query():
            self._recompute_rows(message.views, self._query())
        else:
            table = self.table
            table.set_sort(self.sort_column, self.sort_reverse)
            if self.filter_text:
                table.empty_text = f"No job matches “{self.filter_text}”. Esc clears the filter."
            else:
                table.empty_text = JobTable.EMPTY_TEXT
            table.set_rows(message.rows, message.index)
            if self.pending_cursor is not None and table.select_key(self.pending_cursor):
                self.pending_cursor = None
            self._show_detail()

    def refresh_status(self) -> None:
        """Ask for the status; one read at a time (status() lists every job: 100,000 of them take a while)."""
        if not self.ready:
            return
        if self._status_busy:
            self._status_wanted = True
            return
        self._status_busy, self._status_wanted = True, False
        self._load_status()

    @work(thread=True, exclusive=True, group="status", exit_on_error=False)
    def _load_status(self) -> None:
        try:
            status = self.facade.status()
        except Exception as exc:
            log.warning("cannot read the status: %s", exc)
            self.post_message(WorkerFailed("status", str(exc)))
            return
        self.post_message(StatusLoaded(status))

    @on(StatusLoaded)
    def _status_loaded(self, message: StatusLoaded) -> None:
        status = message.status
        self.status = status
        self.status_bar.show(status, "stopping…" if self.stopping else "")
        if status.database_error:
            # SQLAlchemy appends a "Background on this error" line: the first line says it all.
            reason = status.database_error.splitlines()[0].removeprefix("database unavailable: ")
            self._show_banner(f"⚠ database unavailable: {reason} — showing the last known state; retrying")
        else:
            self._show_banner(None)

    def _show_banner(self, text: str | None) -> None:
        banner = self.db_banner
        banner.update(text or "")
        banner.display = text is not None

    # --- the selected job ------------------------------------------------------------------------------------------
    def selected_job_id(self) -> str | None:
        return self.table.cursor_key if hasattr(self, "table") else None

    def _selected(self) -> JobView | None:
        view = self.table.cursor_value
        if view is None:
            self.notify("no job selected", severity="warning", timeout=3)
        return view

    @on(VirtualTable.Highlighted, "#jobs")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(VirtualTable.Selected, "#jobs")
    def _row_selected(self) -> None:
        self.action_edit_job()

    @on(VirtualTable.HeaderClicked, "#jobs")
    def _header_clicked(self, message: VirtualTable.HeaderClicked) -> None:
        if message.column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = message.column, False
        self._resort()

    def _show_detail(self) -> None:
        """The line under the table: everything about the selected job the narrow columns had to cut."""
        detail = self.job_detail
        view = self.table.cursor_value
        if view is None:
            count = len(self.table.rows)
            detail.update("" if not self.views else f"{count:,} of {len(self.views):,} jobs shown", layout=False)
            return
        now = datetime.now(timezone.utc)
        zone = job_zone(view, self.timezone)
        # Most telling first: the line is cut at the right edge of a narrow terminal.
        parts = [f"{view.id}" + (f" ({view.name})" if view.name != view.id else "")]
        if view.broken:
            parts.append(f"BROKEN: {view.broken}")
        elif view.next_run_time is not None:
            when = view.next_run_time.astimezone(zone)
            parts.append(f"next {when:%Y-%m-%d %H:%M:%S} {zone.key} ({format_relative(view.next_run_time, now)})")
        else:
            parts.append("paused")
        last = view.last_run
        if last is not None:
            ended = last.finished_at or last.started_at or last.scheduled_at
            text = f"last {outcome_text(last)} {format_relative(ended, now)}"
            if last.exception:
                text += f": {last.exception.splitlines()[0] if last.exception.strip() else ''}"
            parts.append(text)
        parts.append(view.trigger_text or "?")
        if self.size.width >= WIDE:
            parts.append(f"{self.table.cursor + 1:,}/{len(self.table.rows):,}")
        detail.update(" · ".join(parts), layout=False)

    # --- actions -------------------------------------------------------------------------------------------------
    def _base_screen(self) -> Screen[Any]:
        """The screen the operator is working on, looking through the command palette if it is open."""
        for screen in reversed(self.screen_stack):
            if not isinstance(screen, CommandPalette):
                return screen
        return self.screen

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        screen = self._base_screen()
        if action in JOB_ACTIONS:
            return screen is self.screen_stack[0]
        if action in ("help", "quit"):
            return not isinstance(screen, ModalScreen)
        return True

    def action_add_job(self) -> None:
        self._open_form(None)

    def action_edit_job(self) -> None:
        view = self._selected()
        if view is None:
            return
        if view.spec is None:
            self.notify(f"{view.id} is broken ({view.broken}); delete it or replace it with the CLI",
                        title="Cannot edit", severity="error")
            return
        self._open_form(view)

    def _open_form(self, view: JobView | None) -> None:
        try:
            from .modals.job_form import JobFormScreen  # built alongside; absent in some checkouts
        except ImportError as exc:
            self.notify(f"the job form is not available: {exc}", severity="error")
            return

        def saved(job_id: str | None) -> None:
            if job_id:
                self.pending_cursor = job_id
                self.notify(f"saved {job_id}", timeout=3)
                self.refresh_jobs()

        self.push_screen(JobFormScreen(self.facade, view.spec if view else None), saved)

    def action_toggle_pause(self) -> None:
        view = self._selected()
        if view is None:
            return
        if view.paused:
            self._call("resume", lambda: self.facade.resume_job(view.id), f"resumed {view.id}")
        else:
            self._call("pause", lambda: self.facade.pause_job(view.id), f"paused {view.id}")

    def action_run_job(self) -> None:
        view = self._selected()
        if view is not None:
            self._call("run", lambda: self.facade.run_job(view.id), f"started a run of {view.id}")

    def action_delete_job(self) -> None:
        view = self._selected()
        if view is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._call("delete", lambda: self.facade.remove_job(view.id), f"deleted {view.id}")

        detail = f"{view.name} · {view.trigger_text}" if view.name != view.id else view.trigger_text
        self.push_screen(ConfirmScreen(f"Delete job {view.id}?", detail + "\nIts run history is kept."), answered)

    def action_history(self) -> None:
        view = self._selected()
        if view is None:
            return
        self.push_screen(HistoryScreen(self.facade, view, job_zone(view, self.timezone).key))

    def action_filter(self) -> None:
        box = self.filter_box
        box.display = True
        box.focus()

    def action_escape(self) -> None:
        box = self.filter_box
        if box.display or self.filter_text:
            box.value = ""
            box.display = False
            self.table.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._recompute_rows(self.views, self._query())

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            event.input.display = False
        self.table.focus()

    def action_sort(self) -> None:
        columns = JobTable.SORTABLE
        self.sort_column = columns[(columns.index(self.sort_column) + 1) % len(columns)]
        self.sort_reverse = False
        self._resort()

    def action_sort_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._resort()

    def _resort(self) -> None:
        self.table.set_sort(self.sort_column, self.sort_reverse)
        order = "descending" if self.sort_reverse else "ascending"
        self.notify(f"sorted by {SORT_TITLES[self.sort_column]}, {order}", timeout=2)
        self._recompute_rows(self.views, self._query())

    def action_help(self) -> None:
        sections = [
            ("Jobs", [b for b in self.BINDINGS if isinstance(b, Binding)]),
            ("Moving in a table", VirtualTable.BINDINGS),
            ("Event log", EventLog.BINDINGS),
            ("Run history", HistoryScreen.BINDINGS),
            ("A run's detail", RunDetailScreen.BINDINGS),
            ("A confirm dialog", ConfirmScreen.BINDINGS),
        ]
        self.push_screen(HelpScreen(sections))

    @work(thread=True, group="actions", exit_on_error=False)
    def _call(self, what: str, call: Callable[[], object], done: str) -> None:
        """One facade call off the UI thread; its outcome comes back as a message."""
        try:
            call()
        except CarnationError as exc:
            self.post_message(WorkerFailed(what, str(exc)))
            return
        except Exception as exc:  # the database, a bug: logged in full, shown in one line
            log.exception("%s failed", what)
            self.post_message(WorkerFailed(what, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(ActionDone(done))

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        self.notify(message.text, timeout=3)
        self.refresh_jobs()

    @on(WorkerFailed)
    def _worker_failed(self, message: WorkerFailed) -> None:
        if message.action in ("refresh", "status"):
            # Periodic: a banner, not a notification a second.
            self._show_banner(f"⚠ cannot read from the database: {message.error.splitlines()[0]}")
            return
        self.notify(message.error, title=f"{message.action.capitalize()} failed", severity="error", timeout=8)


def make_app(settings: Settings, engine: Engine | None = None, theme: str | None = None) -> CarnationApp:
    """The app over `engine`, or over an Engine of its own (started on mount, stopped on quit)."""
    return CarnationApp(settings, engine=engine, theme=theme)


def default_theme() -> str | None:
    """ANSI colours on a 16-colour terminal (TERM=xterm, the Linux console): the terminal's own palette reads
    better there than truecolor squeezed into 16."""
    from rich.console import Console as RichConsole

    return "ansi-dark" if RichConsole().color_system in ("standard", "windows") else None


def run_console(settings: Settings, args: argparse.Namespace | None = None) -> int:
    """Run the console in this terminal (the caller checked it is one). Returns the exit code."""
    from scheduler_core.logs import setup_logging

    log_file = setup_logging(settings.log_dir, settings.log_level, stderr=False)
    theme = getattr(args, "theme", None) or default_theme()
    if theme and theme not in BUILTIN_THEMES:
        names = ", ".join(sorted(BUILTIN_THEMES))
        print(f"carnation: unknown theme {theme!r}; choose one of: {names}", file=sys.stderr)
        return 2
    app = make_app(settings, theme=theme)
    # The UI thread shares the GIL with the scheduler and the refresh worker: a shorter switch interval gets a
    # key press through sooner when they are busy (each asyncio select() gives the GIL away).
    sys.setswitchinterval(UI_SWITCH_INTERVAL)
    log.info("console starting on %s", redact_url(settings.db_url))
    server = None
    if getattr(args, "http", None):
        from scheduler_core.api.server import serve_in_thread  # optional extra: fastapi + uvicorn
        from scheduler_core.errors import CarnationError

        try:
            app.engine.store.migrate()  # the users table must exist before the server checks for users
            server = serve_in_thread(Console(app.engine), args.http, settings,
                                     insecure_no_auth=getattr(args, "http_insecure_no_auth", False))
        except (CarnationError, OSError, ValueError) as exc:
            print(f"carnation: {exc}", file=sys.stderr)
            return 1
    try:
        code = app.run()
    finally:
        if server is not None:
            server.stop()
        # A crash skips the graceful path: still let running jobs end and history reach the database.
        if app.engine.started:
            app.engine.stop()
    if app.return_code:
        print(f"carnation: the console stopped on an error; details in {log_file}", file=sys.stderr)
    return app.return_code or (code or 0)
