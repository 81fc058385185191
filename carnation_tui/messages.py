"""Messages that thread workers post to the UI. Workers never touch widgets: they post one of these and the
handler on the UI thread applies it. `post_message` is thread-safe; `call_from_thread` is never used per event."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from scheduler_core.console import Console, JobView, Page, RunView, Status
from scheduler_core.engine import Engine


@dataclass
class EngineStarted(Message):
    """The embedded engine finished starting (migrations, loading jobs) and the facade is usable."""

    engine: Engine
    console: Console


@dataclass
class EngineFailed(Message):
    """The engine could not start: the app shows why and stays open so the operator can read it."""

    error: str


@dataclass
class EngineStopped(Message):
    """Graceful stop finished (runs ended or timed out, history flushed): the app may exit."""

    finished: bool


@dataclass
class JobsLoaded(Message):
    """A fresh snapshot of every job, already filtered and sorted in the worker (cheap to apply)."""

    views: list[JobView]
    rows: list[JobView]
    index: dict[str, int]
    query: tuple[str, str, bool]  # (filter, sort column, reverse) the rows were computed for
    counts: tuple[int, int, int, int]  # jobs, paused, broken, running: to notice when the status bar is stale

    def can_replace(self, message: Message) -> bool:
        # Only the newest snapshot matters when the UI falls behind.
        return isinstance(message, JobsLoaded)


@dataclass
class StatusLoaded(Message):
    status: Status

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusLoaded)


@dataclass
class WorkerFailed(Message):
    """A facade call failed (SpecError, JobNotFound, NotLeader, the database…): shown as a notification."""

    action: str
    error: str


@dataclass
class ActionDone(Message):
    """A facade call from a key or command succeeded."""

    text: str


@dataclass
class HistoryLoaded(Message):
    page: Page[RunView] | None
    error: str | None = field(default=None)
