"""Thread-safe fan-out of scheduler events to any number of subscribers, never blocking the publisher.

APScheduler calls listeners on its own threads (the scheduler loop, executor workers). Publishing only appends to
each subscriber's bounded deque; subscribers drain in batches on their own schedule (the TUI about ten times a
second). A slow subscriber loses its oldest events and is told how many, instead of slowing the scheduler.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from apscheduler import events as aps

# Our names for APScheduler's event codes, as the event log shows them.
EVENT_NAMES: dict[int, str] = {
    aps.EVENT_SCHEDULER_STARTED: "scheduler started",
    aps.EVENT_SCHEDULER_SHUTDOWN: "scheduler shut down",
    aps.EVENT_SCHEDULER_PAUSED: "scheduler paused",
    aps.EVENT_SCHEDULER_RESUMED: "scheduler resumed",
    aps.EVENT_JOB_ADDED: "added",
    aps.EVENT_JOB_REMOVED: "removed",
    aps.EVENT_JOB_MODIFIED: "modified",
    aps.EVENT_JOB_SUBMITTED: "submitted",
    aps.EVENT_JOB_EXECUTED: "executed",
    aps.EVENT_JOB_ERROR: "error",
    aps.EVENT_JOB_MISSED: "missed",
    aps.EVENT_JOB_MAX_INSTANCES: "skipped",
    aps.EVENT_ALL_JOBS_REMOVED: "all jobs removed",
}


@dataclass(frozen=True, slots=True)
class SchedulerEvent:
    """One thing that happened, in plain data (no APScheduler objects cross into the UI)."""

    kind: str  # a value of EVENT_NAMES, or our own: "paused", "resumed", "broken", "leader", "database", "history"
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    job_id: str | None = None
    scheduled_at: datetime | None = None
    message: str = ""

    @property
    def is_error(self) -> bool:
        return self.kind in ("error", "missed", "skipped", "broken", "database")


class Subscription:
    """A bounded inbox of events. `drain()` returns everything new since the last drain."""

    def __init__(self, bus: EventBus, maxlen: int) -> None:
        self._bus = bus
        self._events: deque[SchedulerEvent] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.dropped = 0

    def _put(self, event: SchedulerEvent) -> None:
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(event)

    def drain(self) -> list[SchedulerEvent]:
        with self._lock:
            batch = list(self._events)
            self._events.clear()
        return batch

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._callbacks: list[Callable[[SchedulerEvent], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, maxlen: int = 10_000) -> Subscription:
        subscription = Subscription(self, maxlen)
        with self._lock:
            self._subscriptions = [*self._subscriptions, subscription]
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    def on_event(self, callback: Callable[[SchedulerEvent], None]) -> None:
        """Call `callback` for every event, on the publishing thread: it must be quick and must not block."""
        with self._lock:
            self._callbacks = [*self._callbacks, callback]

    @property
    def has_subscribers(self) -> bool:
        """Whether anyone would receive an event: publishers skip building one otherwise."""
        return bool(self._subscriptions or self._callbacks)

    def publish(self, event: SchedulerEvent) -> None:
        # Copy-on-write lists: publishing takes no lock.
        for subscription in self._subscriptions:
            subscription._put(event)
        for callback in self._callbacks:
            callback(event)
