"""The event log: every scheduler event, newest at the bottom, on the Line API.

Bounded (oldest lines fall off), applied in batches (one refresh per drain, never one per event), and following
the bottom until the operator scrolls up; scrolling back to the bottom (or End) follows again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import ClassVar
from zoneinfo import ZoneInfo

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from scheduler_core.events import SchedulerEvent

KIND_STYLE = {
    "executed": "good",
    "error": "bad",
    "missed": "bad",
    "skipped": "warn",
    "broken": "bad",
    "database": "bad",
    "submitted": "dim",
    "paused": "warn",
    "resumed": "warn",
    "added": "accent",
    "modified": "accent",
    "removed": "accent",
}


class EventLog(ScrollView, can_focus=True):
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("up,k", "scroll_lines(-1)", "Up", show=False, id="events.up"),
        Binding("down,j", "scroll_lines(1)", "Down", show=False, id="events.down"),
        Binding("pageup", "scroll_lines(-10)", "Page up", show=False, id="events.page-up"),
        Binding("pagedown", "scroll_lines(10)", "Page down", show=False, id="events.page-down"),
        Binding("home,g", "top", "Oldest", show=False, id="events.top"),
        Binding("end,G", "follow", "Follow", show=False, id="events.follow"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "event-log--time",
        "event-log--job",
        "event-log--good",
        "event-log--bad",
        "event-log--warn",
        "event-log--dim",
        "event-log--accent",
    }

    DEFAULT_CSS = """
    EventLog {
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        background: $surface;
        & > .event-log--time { color: $text-muted; }
        & > .event-log--job { text-style: bold; }
        & > .event-log--good { color: $text-success; }
        & > .event-log--bad { color: $text-error; }
        & > .event-log--warn { color: $text-warning; }
        & > .event-log--dim { color: $text-muted; }
        & > .event-log--accent { color: $text-accent; }
    }
    """

    def __init__(self, timezone: str = "UTC", max_lines: int = 5000, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.zone = ZoneInfo(timezone)
        self.lines: deque[tuple[int, SchedulerEvent | str]] = deque(maxlen=max_lines)
        self.max_lines = max_lines
        self.follow = True
        self._seq = 0  # numbers lines so cached strips survive the oldest lines falling off
        self._strips: dict[int, Strip] = {}
        self._styles: dict[str, Style] = {}

    def add_events(self, batch: Iterable[SchedulerEvent | str]) -> None:
        """Append a batch in one update. A str is a note of our own (e.g. how many events were dropped)."""
        before = len(self.lines)
        added = 0
        for item in batch:
            self.lines.append((self._seq, item))
            self._seq += 1
            added += 1
        if not added:
            return
        fell_off = before + added - len(self.lines)
        if len(self._strips) > 4 * self.max_lines:
            self._strips.clear()
        self.virtual_size = Size(self.size.width, len(self.lines))
        if self.follow:
            self.scroll_end(animate=False, immediate=True, force=True, x_axis=False)
        elif fell_off:
            # Keep the operator's place: the lines they read moved up by what fell off the top.
            self.scroll_to(y=max(0, round(self.scroll_y) - fell_off), animate=False, immediate=True, force=True)
        self.refresh()
        self._update_title()

    def text_lines(self) -> list[str]:
        """Every line as plain text (for tests and copying)."""
        return [self._plain(item) for _, item in self.lines]

    # --- follow mode ---------------------------------------------------------------------------------------------
    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        at_end = round(new_value) >= self.max_scroll_y
        if at_end != self.follow:
            self.follow = at_end
            self._update_title()

    def _update_title(self) -> None:
        state = "" if self.follow else " — paused, End to follow"
        self.border_title = f"Events ({len(self.lines):,}){state}"

    def action_scroll_lines(self, delta: int) -> None:
        self.scroll_to(y=round(self.scroll_y) + delta, animate=False, immediate=True, force=True)

    def action_top(self) -> None:
        self.scroll_home(animate=False, immediate=True, force=True)

    def action_follow(self) -> None:
        self.follow = True
        self.scroll_end(animate=False, immediate=True, force=True, x_axis=False)
        self._update_title()

    def on_mount(self) -> None:
        self._update_title()

    def on_resize(self, _event: events.Resize) -> None:
        self._strips.clear()
        self.virtual_size = Size(self.size.width, len(self.lines))
        if self.follow:
            self.scroll_end(animate=False, immediate=True, force=True, x_axis=False)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles.clear()
        self._strips.clear()

    # --- rendering -------------------------------------------------------------------------------------------------
    def _style(self, name: str) -> Style:
        """A component style over the widget's own; "" is the widget's own (rich_style is costly per line)."""
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = self.rich_style + (
                self.get_component_rich_style(f"event-log--{name}", partial=True) if name else Style())
        return style

    def _plain(self, item: SchedulerEvent | str) -> str:
        if isinstance(item, str):
            return item
        return " ".join(text for text, _ in self._parts(item) if text)

    def _parts(self, event: SchedulerEvent) -> list[tuple[str, str]]:
        when = event.time.astimezone(self.zone).strftime("%H:%M:%S")
        kind_style = KIND_STYLE.get(event.kind, "accent" if event.job_id is None else "dim")
        parts = [(when, "time"), (event.kind, kind_style)]
        if event.job_id:
            parts.insert(1, (event.job_id, "job"))
        if event.message:
            parts.append((event.message, "bad" if event.is_error else "dim"))
        return parts

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = round(self.scroll_y) + y
        if index >= len(self.lines):
            return Strip.blank(width, self._style(""))
        seq, item = self.lines[index]
        strip = self._strips.get(seq)
        if strip is None:
            if isinstance(item, str):
                segments = [Segment(item, self._style("warn"))]
            else:
                segments = []
                for text, style in self._parts(item):
                    segments.append(Segment(text, self._style(style)))
                    segments.append(Segment(" ", self._style("")))
            strip = Strip(segments).crop_extend(0, width, self._style(""))
            if strip.cell_length > width:
                strip = strip.crop(0, width)
            self._strips[seq] = strip
        return strip
