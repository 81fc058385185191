"""The jobs table: a virtual view on Textual's Line API (toolong's LogLines pattern), not a DataTable.

Only the visible rows are rendered (`render_line(y)`), rendered strips are cached until the data, the width or
the theme changes, and the cursor follows a job by id, not by position. Filtering and sorting 100,000 jobs is done
by `compute_rows` in the refresh worker thread, so the UI thread only swaps lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from scheduler_core.console import JobView, RunView
from scheduler_core.describe import format_duration, format_relative

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    width: int  # minimum cells
    flex: int = 0  # share of the width left over once every minimum is met
    wide_width: int | None = None  # width once the table is at least WIDE cells wide


WIDE = 100  # below this (an 80-column terminal) the table drops details that the detail line shows anyway


def fit(text: str, width: int) -> str:
    """`text` cut or padded to exactly `width` cells, with an ellipsis when cut."""
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    return set_cell_size(text, width - 1) + "…" if width > 0 else ""


class VirtualTable(ScrollView, Generic[R], can_focus=True):
    """A read-only table of rows keyed by a string id, with a fixed header line and a cursor.

    Subclasses give COLUMNS, `row_key(row)` and `cells(row, now)`."""

    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    EMPTY_TEXT: ClassVar[str] = "Nothing here yet."

    BINDINGS: ClassVar[list[Binding]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page-up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page-down"),
        Binding("home,g", "jump(0)", "First row", show=False, id="table.first"),
        Binding("end,G", "jump(-1)", "Last row", show=False, id="table.last"),
        Binding("enter", "select", "Open", show=False, tooltip="Open: edit a job, the detail of a run",
                id="table.select"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "virtual-table--header",
        "virtual-table--cursor",
        "virtual-table--cursor-blurred",
        "virtual-table--dim",
        "virtual-table--good",
        "virtual-table--bad",
        "virtual-table--warn",
        "virtual-table--accent",
    }

    DEFAULT_CSS = """
    VirtualTable {
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        background: $surface;
        & > .virtual-table--header { text-style: bold; background: $panel; color: $text; }
        & > .virtual-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground; text-style: bold; }
        & > .virtual-table--cursor-blurred { background: $block-cursor-blurred-background; }
        & > .virtual-table--dim { color: $text-muted; }
        & > .virtual-table--good { color: $text-success; }
        & > .virtual-table--bad { color: $text-error; }
        & > .virtual-table--warn { color: $text-warning; }
        & > .virtual-table--accent { color: $text-accent; }
    }
    """

    @dataclass
    class Highlighted(Message):
        """The cursor moved to another row (or the row under it changed)."""

        table: VirtualTable[Any]
        key: str | None

        @property
        def control(self) -> VirtualTable[Any]:
            return self.table

    @dataclass
    class Selected(Message):
        """Enter (or a double click) on a row."""

        table: VirtualTable[Any]
        key: str

        @property
        def control(self) -> VirtualTable[Any]:
            return self.table

    @dataclass
    class HeaderClicked(Message):
        table: VirtualTable[Any]
        column: str

        @property
        def control(self) -> VirtualTable[Any]:
            return self.table

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.rows: list[R] = []
        self._index: dict[str, int] = {}
        self.cursor = 0
        self.sort_column: str | None = None
        self.sort_reverse = False
        self.empty_text = self.EMPTY_TEXT
        self._strips: dict[tuple[str, bool], Strip] = {}
        self._layout: tuple[int, list[tuple[Column, int]]] | None = None
        self._styles: dict[str, Style] = {}
        self._last_highlighted: tuple[str | None, int] | None = None

    # --- what subclasses provide --------------------------------------------------------------------------------
    def row_key(self, row: R) -> str:
        raise NotImplementedError

    def cells(self, row: R, now: datetime) -> list[tuple[str, str | None]]:
        """One (text, component class or None) per column of COLUMNS."""
        raise NotImplementedError

    # --- data ----------------------------------------------------------------------------------------------------
    @property
    def cursor_key(self) -> str | None:
        return self.row_key(self.rows[self.cursor]) if self.rows else None

    @property
    def cursor_value(self) -> R | None:
        return self.rows[self.cursor] if self.rows else None

    def set_rows(self, rows: list[R], index: dict[str, int] | None = None) -> None:
        """Replace every row, keeping the cursor on the same key and that row on the same screen line."""
        old_key = self.cursor_key
        top = round(self.scroll_y)
        screen_line = self.cursor - top
        cursor_was_visible = 0 <= screen_line < self._page_height()
        self.rows = rows
        self._index = index if index is not None else {self.row_key(r): i for i, r in enumerate(rows)}
        new = self._index.get(old_key, self.cursor) if old_key is not None else self.cursor
        self.cursor = max(0, min(new, len(rows) - 1))
        self._strips.clear()
        self.virtual_size = Size(self.size.width, len(rows) + 1)
        if cursor_was_visible:
            # Keep the cursor's row where the eye left it (a job inserted above does not push it down).
            self.scroll_to(y=max(0, self.cursor - screen_line), animate=False, immediate=True, force=True)
            self._scroll_cursor_into_view()
        else:
            # Scrolled away from the cursor (mouse wheel): leave the view where the operator put it.
            self.scroll_to(y=top, animate=False, immediate=True, force=True)
        self.refresh()
        self._post_highlighted()

    def select_key(self, key: str) -> bool:
        """Move the cursor to the row of `key`; False if it is not shown."""
        row = self._index.get(key)
        if row is None:
            return False
        self.move_cursor(row)
        return True

    def move_cursor(self, row: int) -> None:
        if not self.rows:
            return
        row = max(0, min(row, len(self.rows) - 1))
        old, self.cursor = self.cursor, row
        if old != row:
            # Virtual line of row i is i + 1: the header takes line 0.
            self.refresh_lines(old + 1)
            self.refresh_lines(row + 1)
        self._scroll_cursor_into_view()
        self._post_highlighted()

    def set_sort(self, column: str | None, reverse: bool) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        self.refresh()

    def invalidate(self) -> None:
        """Forget rendered rows (relative times went stale, the theme changed)."""
        self._strips.clear()
        self.refresh()

    def _page_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_cursor_into_view(self) -> None:
        top = round(self.scroll_y)
        height = self._page_height()
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True, force=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True, force=True)

    def _post_highlighted(self) -> None:
        current = (self.cursor_key, id(self.cursor_value))
        if current != self._last_highlighted:
            self._last_highlighted = current
            self.post_message(self.Highlighted(self, self.cursor_key))

    # --- keys and mouse -------------------------------------------------------------------------------------------
    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        height = self._page_height()
        self.scroll_to(y=round(self.scroll_y) + direction * height, animate=False, immediate=True, force=True)
        self.move_cursor(self.cursor + direction * height)

    def action_jump(self, row: int) -> None:
        self.move_cursor(row if row >= 0 else len(self.rows) - 1)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            column = self._column_at(offset.x)
            if column is not None:
                self.post_message(self.HeaderClicked(self, column))
            return
        row = round(self.scroll_y) + offset.y - 1
        if 0 <= row < len(self.rows):
            self.move_cursor(row)
            if event.chain >= 2:
                self.action_select()

    def _column_at(self, x: int) -> str | None:
        left = 0
        for column, width in self._columns():
            if left <= x < left + width + 1:
                return column.key
            left += width + 1
        return None

    # --- rendering -------------------------------------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles.clear()
        self._strips.clear()

    def on_resize(self, _event: events.Resize) -> None:
        self._strips.clear()
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        self._scroll_cursor_into_view()

    def on_focus(self) -> None:
        self._styles.clear()
        self.invalidate()

    def on_blur(self) -> None:
        self._styles.clear()
        self.invalidate()

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = self.get_component_rich_style(f"virtual-table--{name}", partial=True)
        return style

    @property
    def _base(self) -> Style:
        # rich_style walks every ancestor's styles: computed once per style change, not once per line.
        style = self._styles.get("")
        if style is None:
            style = self._styles[""] = self.rich_style
        return style

    def _columns(self) -> list[tuple[Column, int]]:
        """Each column and its width for the current width: minimums first, the rest shared by flex."""
        width = self.scrollable_content_region.width
        if self._layout is not None and self._layout[0] == width:
            return self._layout[1]
        wide = width >= WIDE
        widths = [(c.wide_width if wide and c.wide_width else c.width) for c in self.COLUMNS]
        spare = width - sum(widths) - (len(widths) - 1)
        flex_total = sum(c.flex for c in self.COLUMNS)
        if spare > 0 and flex_total:
            shares = [spare * c.flex // flex_total for c in self.COLUMNS]
            # Whatever integer division left over goes to the widest-flexing column.
            shares[max(range(len(shares)), key=lambda i: self.COLUMNS[i].flex)] += spare - sum(shares)
            widths = [w + s for w, s in zip(widths, shares)]
        layout = list(zip(self.COLUMNS, widths))
        self._layout = (width, layout)
        return layout

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self._base
        if y == 0:
            return self._render_header(width)
        row = round(self.scroll_y) + y - 1
        if not self.rows:
            if y == 2:
                return Strip([Segment(fit("  " + self.empty_text, width), base + self._style("dim"))])
            return Strip.blank(width, base)
        if row >= len(self.rows):
            return Strip.blank(width, base)
        is_cursor = row == self.cursor
        key = (self.row_key(self.rows[row]), is_cursor)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._strips[key] = self._render_row(self.rows[row], is_cursor, width)
        return strip

    def _render_header(self, width: int) -> Strip:
        style = self._base + self._style("header")
        segments = []
        for column, col_width in self._columns():
            title = column.title
            if column.key == self.sort_column:
                title += " ▼" if self.sort_reverse else " ▲"
            segments.append(Segment(fit(title, col_width) + " ", style))
        return Strip(segments).crop_extend(0, width, style)

    def _render_row(self, row: R, is_cursor: bool, width: int) -> Strip:
        base = self._base
        if is_cursor:
            base = base + self._style("cursor" if self.has_focus else "cursor-blurred")
        now = datetime.now(timezone.utc)
        segments = []
        for (column, col_width), (text, style_name) in zip(self._columns(), self.cells(row, now)):
            style = base if style_name is None or (is_cursor and self.has_focus) else base + self._style(style_name)
            segments.append(Segment(fit(text, col_width), style))
            segments.append(Segment(" ", base))
        return Strip(segments).crop_extend(0, width, base)


# --- jobs ---------------------------------------------------------------------------------------------------------

STATE_STYLE = {"scheduled": None, "paused": "warn", "running": "accent", "broken": "bad"}
OUTCOME_WORDS = {"success": "ok", "error": "error", "timeout": "timeout", "missed": "missed", "skipped": "skipped"}
OUTCOME_STYLE = {"success": "good", "error": "bad", "timeout": "bad", "missed": "warn", "skipped": "warn"}
FAR_FUTURE = datetime.max.replace(tzinfo=timezone.utc)


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def job_zone(view: JobView, default: str) -> ZoneInfo:
    """The job's own timezone, else the console's."""
    name = view.spec.timezone if view.spec is not None and view.spec.timezone else default
    try:
        return zone(name)
    except Exception:
        return zone("UTC")


def outcome_text(run: RunView | None) -> str:
    if run is None:
        return "—"
    word = OUTCOME_WORDS.get(run.outcome, run.outcome)
    return f"{word} {format_duration(run.duration)}" if run.duration is not None else word


def short_time(when: datetime, now: datetime) -> str:
    """Absolute time, as short as stays unambiguous: the time alone today, the date too otherwise."""
    if when.date() == now.astimezone(when.tzinfo).date():
        return when.strftime("%H:%M:%S")
    if when.year == now.year:
        return when.strftime("%b %d %H:%M")
    return when.strftime("%Y-%m-%d")


SORT_KEYS: dict[str, Callable[[JobView], Any]] = {
    "id": lambda v: v.id,
    "name": lambda v: (v.name.casefold(), v.id),
    "kind": lambda v: (v.kind, v.id),
    "trigger": lambda v: (v.trigger_text.casefold(), v.id),
    "next": lambda v: (v.next_run_time or FAR_FUTURE, v.id),
    "last": lambda v: (v.last_run.outcome if v.last_run else "~", v.id),
    "state": lambda v: (v.state, v.id),
}


def matches(view: JobView, needle: str) -> bool:
    return (needle in view.id.casefold() or needle in view.name.casefold() or needle in view.kind
            or needle in view.trigger_text.casefold())


def compute_rows(
    views: Sequence[JobView], needle: str, sort: str, reverse: bool
) -> tuple[list[JobView], dict[str, int]]:
    """The rows to show: filtered on id/name/kind/trigger, sorted. Pure and thread-safe (runs in a worker)."""
    needle = needle.strip().casefold()
    rows = [v for v in views if matches(v, needle)] if needle else list(views)
    if sort != "id" or reverse:  # the facade already orders by id
        rows.sort(key=SORT_KEYS[sort], reverse=reverse)
    return rows, {v.id: i for i, v in enumerate(rows)}


class JobTable(VirtualTable[JobView]):
    COLUMNS = (
        Column("id", "ID", 8, flex=2),
        Column("name", "Name", 6, flex=2),
        Column("kind", "Kind", 6),
        Column("trigger", "Trigger", 10, flex=4),
        Column("next", "Next run", 9, wide_width=19),
        Column("last", "Last run", 13),
        Column("state", "State", 9),
    )
    SORTABLE: ClassVar[tuple[str, ...]] = tuple(c.key for c in COLUMNS)
    EMPTY_TEXT = "No jobs yet. Press a to add one."

    def __init__(self, timezone: str = "UTC", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.timezone = timezone
        self.sort_column = "id"

    def row_key(self, row: JobView) -> str:
        return row.id

    def cells(self, view: JobView, now: datetime) -> list[tuple[str, str | None]]:
        return [
            (view.id, None),
            (view.name if view.name != view.id else "", None),
            (view.kind, "dim"),
            (view.trigger_text if not view.broken else view.broken, "bad" if view.broken else None),
            self._next_cell(view, now),
            (outcome_text(view.last_run), OUTCOME_STYLE.get(view.last_run.outcome) if view.last_run else "dim"),
            (view.state if not view.running or view.running == 1 else f"running×{view.running}",
             STATE_STYLE.get(view.state)),
        ]

    def _next_cell(self, view: JobView, now: datetime) -> tuple[str, str | None]:
        nrt = view.next_run_time
        if nrt is None:
            return ("paused" if view.state == "paused" else "—", "dim")
        relative = format_relative(nrt, now)
        if self.scrollable_content_region.width < WIDE:
            return relative, None
        return f"{relative:<9} {short_time(nrt.astimezone(job_zone(view, self.timezone)), now)}", None
