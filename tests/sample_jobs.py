"""Job functions for tests, importable as `tests.sample_jobs:<name>` from the repository root."""

from __future__ import annotations

import threading
import time
from typing import Any

NOT_CALLABLE = 42


def add(a: float, b: float) -> float:
    return a + b


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def record(path: str, value: Any) -> None:
    """Append `value` as one line to `path`: proof, for tests, that a run happened and when."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{value}\n")


class Namespace:
    """For `module:obj.attr` references."""

    @staticmethod
    def double(x: float) -> float:
        return 2 * x


def thread_name() -> str:
    return threading.current_thread().name


def exit_job(code: int = 2) -> None:
    raise SystemExit(code)


def block_until(path: str, timeout: float = 10.0, started: str | None = None) -> str:
    """Hold a worker until `path` exists (or timeout): lets a test keep a run going as long as it needs. Creates
    `started`, if given, as it begins (a submitted run may still wait for its claim)."""
    import os

    if started:
        open(started, "w").close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released" if os.path.exists(path) else "timed out"
