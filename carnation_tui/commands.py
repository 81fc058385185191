"""Ctrl+P: the same actions as the keys, found by typing. Built from the app's own BINDINGS (by binding id),
so a key and its command can never disagree about what they do."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from .screens.help import key_label

# binding id -> (palette title, help line). "{job}" is the job under the cursor.
COMMAND_TEXT: dict[str, tuple[str, str]] = {
    "job.add": ("Add a job", "open the job form for a new job"),
    "job.edit": ("Edit {job}", "open the job form on the selected job"),
    "job.pause": ("Pause or resume {job}", "toggle whether the selected job fires"),
    "job.run": ("Run {job} now", "start one run right away; the schedule is unchanged"),
    "job.delete": ("Delete {job}", "remove the selected job (asks first)"),
    "job.history": ("History of {job}", "the runs of the selected job, newest first"),
    "jobs.filter": ("Filter jobs", "narrow the table by id, name, kind or trigger"),
    "jobs.sort": ("Sort by the next column", "cycle the column the table is sorted by"),
    "jobs.sort-reverse": ("Reverse the sort order", "ascending ↔ descending"),
    "app.help": ("Show keys", "every key binding"),
    "app.quit": ("Quit", "stop the scheduler gracefully and leave"),
}


class JobCommands(Provider):
    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        app = self.app
        cursor = getattr(app, "selected_job_id", None)
        job = cursor() if callable(cursor) else None
        commands = []
        bindings: list[Binding] = [b for b in app.BINDINGS if isinstance(b, Binding)]
        for binding in bindings:
            text = COMMAND_TEXT.get(binding.id or "")
            if text is None or app.check_action(binding.action, ()) is False:
                continue
            title, help_text = text
            if "{job}" in title:
                if job is None:
                    continue
                title = title.format(job=job)
            commands.append((title, f"{help_text} · key {key_label(binding)}", partial(app.run_action, binding.action)))
        return commands

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
