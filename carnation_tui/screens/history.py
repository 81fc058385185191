"""`h`: the runs of one job, newest first, a page at a time; Enter opens one run's detail. Esc goes back.

A page is as many runs as the table shows, so PageDown/PageUp (and n/p) turn pages without inner scrolling.
Page 1 reloads every two seconds, keeping the cursor on the same run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import ClassVar
from zoneinfo import ZoneInfo

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from scheduler_core.console import Console, JobView, RunView
from scheduler_core.describe import format_duration, format_relative

from ..messages import HistoryLoaded
from ..widgets.job_table import OUTCOME_STYLE, Column, VirtualTable

RELOAD_SECONDS = 2.0


def absolute(when: datetime | None, zone: ZoneInfo) -> str:
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if when else "—"


def lateness(run: RunView) -> str:
    """How long after its scheduled time the run actually started."""
    if run.started_at is None:
        return "—"
    late = (run.started_at - run.scheduled_at).total_seconds()
    return ("+" if late >= 0 else "") + format_duration(late)


def run_summary(run: RunView) -> str:
    """The one thing worth reading about a run in a table cell."""
    if run.exception:
        return run.exception.splitlines()[0] if run.exception.strip() else run.exception
    if run.http_status is not None:
        return f"HTTP {run.http_status}"
    if run.exit_code is not None:
        return f"exit {run.exit_code}"
    return run.return_value or ""


class RunTable(VirtualTable[RunView]):
    COLUMNS = (
        Column("outcome", "Outcome", 8),
        Column("scheduled", "Scheduled", 19),
        Column("started", "Started", 8),
        Column("late", "Late", 7),
        Column("duration", "Took", 8),
        Column("host", "Host", 6, flex=1),
        Column("detail", "Result", 6, flex=3),
    )
    EMPTY_TEXT = "No runs recorded yet. Press r on the jobs screen to run it now."

    def __init__(self, zone: ZoneInfo, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.zone = zone

    def row_key(self, row: RunView) -> str:
        return str(row.id) if row.id is not None else f"{row.job_id}@{row.scheduled_at.timestamp()}"

    def cells(self, run: RunView, now: datetime) -> list[tuple[str, str | None]]:
        started = run.started_at.astimezone(self.zone).strftime("%H:%M:%S") if run.started_at else "—"
        return [
            (run.outcome, OUTCOME_STYLE.get(run.outcome)),
            (absolute(run.scheduled_at, self.zone), None),
            (started, None),
            (lateness(run), "dim"),
            (format_duration(run.duration) if run.duration is not None else "—", None),
            (run.host, "dim"),
            (run_summary(run), "bad" if run.exception else None),
        ]


class HistoryScreen(Screen[None]):
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape", "back", "Back", id="history.back"),
        Binding("n", "turn(1)", "Older", tooltip="Next page (older runs)", id="history.next-page"),
        Binding("p", "turn(-1)", "Newer", tooltip="Previous page (newer runs)", id="history.prev-page"),
        Binding("pagedown", "turn(1)", "Older", show=False, priority=True, tooltip="Next page (older runs)",
                id="history.next-page-key"),
        Binding("pageup", "turn(-1)", "Newer", show=False, priority=True, tooltip="Previous page (newer runs)",
                id="history.prev-page-key"),
        Binding("enter", "open_run", "Details", tooltip="Details of the selected run", id="history.open"),
        Binding("R", "reload", "Reload", show=False, tooltip="Reload this page now", id="history.reload"),
    ]

    def __init__(self, console: Console, job: JobView, timezone_name: str) -> None:
        super().__init__()
        self.console = console
        self.job = job
        self.zone = ZoneInfo(timezone_name)
        self.page = 1
        self.pages = 1
        self.total = 0
        self.per_page = 20

    def compose(self) -> ComposeResult:
        title = f"History of {self.job.id}"
        if self.job.name != self.job.id:
            title += f" — {self.job.name}"
        yield Static(Text(f"{title} · {self.job.trigger_text} · times in {self.zone.key}", no_wrap=True,
                          overflow="ellipsis"), id="history-title")
        yield RunTable(self.zone, id="runs")
        yield Static("loading…", id="history-pages")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(RunTable).focus()
        # The table's height decides the page size, so wait for the first layout.
        self.call_after_refresh(self._first_load)
        self.set_interval(RELOAD_SECONDS, self._auto_reload)

    def _first_load(self) -> None:
        self.per_page = max(5, min(200, self.query_one(RunTable)._page_height()))
        self.load()

    def _auto_reload(self) -> None:
        if self.page == 1 and self.is_current:
            self.load()

    def load(self) -> None:
        self._fetch(self.job.id, self.page, self.per_page)

    @work(thread=True, exclusive=True, group="history", exit_on_error=False)
    def _fetch(self, job_id: str, page: int, per_page: int) -> None:
        try:
            result = self.console.history(job_id, page, per_page)
        except Exception as exc:  # the database may be down: say so, keep the screen
            if not get_current_worker().is_cancelled:
                self.post_message(HistoryLoaded(None, str(exc)))  # type: ignore[arg-type]
            return
        if not get_current_worker().is_cancelled:
            self.post_message(HistoryLoaded(result))

    @on(HistoryLoaded)
    def _loaded(self, message: HistoryLoaded) -> None:
        info = self.query_one("#history-pages", Static)
        if message.error is not None:
            info.update(Text(f"cannot read history: {message.error}", style="bold red", no_wrap=True,
                             overflow="ellipsis"), layout=False)
            return
        page = message.page
        if page.page > page.pages and page.page > 1:  # runs were pruned under us
            self.page = page.pages
            self.load()
            return
        self.pages, self.total = page.pages, page.total
        self.query_one(RunTable).set_rows(page.items)
        info.update(Text(f"page {page.page} of {page.pages} · {page.total:,} runs · n/PgDn next · p/PgUp previous"
                         " · Enter details", no_wrap=True, overflow="ellipsis"), layout=False)

    def action_turn(self, delta: int) -> None:
        page = max(1, min(self.pages, self.page + delta))
        if page == self.page:
            self.notify("no newer runs" if delta < 0 else "no older runs", timeout=2)
            return
        self.page = page
        self.query_one(RunTable).cursor = 0
        self.load()

    def action_reload(self) -> None:
        self.load()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_open_run(self) -> None:
        run = self.query_one(RunTable).cursor_value
        if run is not None:
            self.app.push_screen(RunDetailScreen(run, self.zone))

    @on(VirtualTable.Selected)
    def _selected(self, event: VirtualTable.Selected) -> None:
        event.stop()
        self.action_open_run()


class RunDetailScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[Binding]] = [Binding("escape,q", "close", "Close", id="run.close")]

    def __init__(self, run: RunView, zone: ZoneInfo) -> None:
        super().__init__()
        self.run = run
        self.zone = zone

    def compose(self) -> ComposeResult:
        run = self.run
        now = datetime.now(timezone.utc)
        fields = Table(box=None, show_header=False, padding=(0, 1))
        fields.add_column(style="bold", no_wrap=True)
        fields.add_column()

        def moment(when: datetime | None) -> str:
            return f"{absolute(when, self.zone)} ({format_relative(when, now)})" if when else "—"

        fields.add_row("outcome", Text(run.outcome, style="bold"))
        fields.add_row("scheduled", moment(run.scheduled_at))
        fields.add_row("started", moment(run.started_at) + (f", {lateness(run)} late" if run.started_at else ""))
        fields.add_row("finished", moment(run.finished_at))
        fields.add_row("duration", format_duration(run.duration) if run.duration is not None else "—")
        fields.add_row("host", f"{run.host} (pid {run.pid})")
        if run.exit_code is not None:
            fields.add_row("exit code", str(run.exit_code))
        if run.http_status is not None:
            fields.add_row("HTTP status", str(run.http_status))
        if run.return_value is not None:
            fields.add_row("returned", Text(run.return_value))
        with VerticalScroll(id="run-box") as box:
            box.border_title = f"Run {run.id} of {run.job_id} — Esc closes"
            yield Static(fields, id="run-fields")
            for title, body in (("Exception", run.exception), ("Traceback", run.traceback),
                                ("Output (tail)", run.output)):
                if body:
                    yield Static(Text(title, style="bold underline"), classes="run-section")
                    yield Static(Text(body), classes="run-text", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
