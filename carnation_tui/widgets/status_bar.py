"""One line of who-and-what: database, host, executing or standing by, job counts, running now, recent errors.

Parts are dropped from the least useful end when the terminal is narrow; the database URL (password already
hidden by the facade) is shortened from the left so its file name or host stays visible.
"""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.widget import Widget

from scheduler_core.console import Status


def shorten_left(text: str, width: int) -> str:
    """Cut from the left, where a URL's least telling part is, keeping its scheme: "sqlite:…/data/c.db"."""
    if cell_len(text) <= width:
        return text
    scheme, sep, _rest = text.partition(":")
    head = scheme + ":…" if sep and len(scheme) + 6 < width else "…"
    return head + text[len(text) - max(0, width - len(head)):] if width > len(head) else ""


class StatusBar(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"status-bar--good", "status-bar--bad", "status-bar--warn",
                                             "status-bar--dim"}

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        background: $panel;
        color: $text;
        & > .status-bar--good { color: $text-success; text-style: bold; }
        & > .status-bar--bad { color: $text-error; text-style: bold; }
        & > .status-bar--warn { color: $text-warning; }
        & > .status-bar--dim { color: $text-muted; }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.status: Status | None = None
        self.counts: tuple[int, int, int, int] | None = None  # from the latest jobs snapshot, when newer
        self.note = "starting the scheduler: loading jobs…"

    def show(self, status: Status | None, note: str = "") -> None:
        self.status, self.note = status, note
        self.refresh()

    def show_counts(self, jobs: int, paused: int, broken: int, running: int) -> None:
        """Counts from a jobs snapshot: refreshed every second, where the full status comes every few."""
        self.counts = (jobs, paused, broken, running)
        self.refresh()

    def _parts(self) -> list[tuple[str, str | None]]:
        status = self.status
        if status is None:
            return [(self.note, "warn")]
        role = ("● executing", "good") if status.executing else ("○ standing by", "warn")
        jobs, paused, broken, running = self.counts or (status.jobs, status.paused, status.broken,
                                                        status.running_now)
        counts = f"{jobs:,} job" + ("" if jobs == 1 else "s")
        if paused:
            counts += f" · {paused:,} paused"
        if broken:
            counts += f" · {broken:,} broken"
        errors = "errors/h ?" if status.errors_last_hour < 0 else f"{status.errors_last_hour} errors/h"
        parts: list[tuple[str, str | None]] = [
            role,
            (counts, "bad" if broken else None),
            (f"{running} running", "good" if running else "dim"),
            (errors, "bad" if status.errors_last_hour > 0 else "dim"),
            (status.host, "dim"),
        ]
        if self.note:  # "stopping…": more telling than any count, so never the first dropped
            parts.insert(1, (self.note, "warn"))
        if status.database_error:
            parts.insert(0, ("DB DOWN", "bad"))
        return parts

    def render(self) -> Text:
        width = self.size.width
        parts = self._parts()
        separator = " │ "
        # Drop the least useful parts (at the end) until the rest fits with a few cells for the database.
        while len(parts) > 1 and sum(cell_len(t) for t, _ in parts) + len(separator) * len(parts) + 12 > width:
            parts.pop()
        text = Text(no_wrap=True, overflow="ellipsis")
        for index, (part, style) in enumerate(parts):
            if index:
                text.append(separator, self.get_component_rich_style("status-bar--dim", partial=True))
            text.append(part, self.get_component_rich_style(f"status-bar--{style}", partial=True) if style else "")
        if self.status is not None:
            room = width - text.cell_len - len(separator) - 1
            if room > 6:
                text.append(separator, self.get_component_rich_style("status-bar--dim", partial=True))
                text.append(shorten_left(self.status.database, room))
        return text
