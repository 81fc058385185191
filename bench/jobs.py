"""The job functions both sides run. Equally cheap on both sides: one call, no I/O."""

from __future__ import annotations

import time


def stamp() -> float:
    """A no-op that returns the moment it started (epoch seconds): the bare side's fire-lateness probe."""
    return time.time()


def noop() -> None:
    return None
