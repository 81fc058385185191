"""`?`: every key binding, grouped by where it works, generated from the BINDINGS themselves so it cannot drift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.console import Group
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "Esc", "enter": "Enter", "pageup": "PgUp",
             "pagedown": "PgDn", "home": "Home", "end": "End", "up": "↑", "down": "↓", "left": "←", "right": "→",
             "tab": "Tab", "shift+tab": "Shift+Tab", "ctrl+p": "Ctrl+P"}


def key_label(binding: Binding) -> str:
    """All keys of a binding, as a person types them ("e", "Enter", "Ctrl+P")."""
    labels = []
    for key in binding.key.split(","):
        key = key.strip()
        label = KEY_NAMES.get(key)
        if label is None:
            label = "+".join(part.capitalize() if len(part) > 1 else part for part in key.split("+"))
        labels.append(label)
    return " / ".join(labels)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape,q,question_mark", "dismiss", "Close", id="help.close"),
    ]

    def __init__(self, sections: Sequence[tuple[str, Sequence[Binding]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys — Esc closes"
            yield Static(Group(*(self._section(title, bindings) for title, bindings in self.sections)),
                         id="help-table")

    @staticmethod
    def _section(title: str, bindings: Sequence[Binding]) -> Table:
        # One table per section, so a section title never widens the key column.
        table = Table(box=None, show_header=False, padding=(0, 1), expand=True, title=title,
                      title_justify="left", title_style="bold underline")
        table.add_column("key", style="bold", no_wrap=True, min_width=10)
        table.add_column("what", ratio=1)
        table.add_column("id", style="dim", no_wrap=True)
        for binding in bindings:
            table.add_row(key_label(binding), binding.tooltip or binding.description or binding.action,
                          binding.id or "")
        return table

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
