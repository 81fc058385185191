"""Logging: a rotating file in the log dir always; stderr too when headless. APScheduler's loggers included,
so "No handlers could be found for logger apscheduler.executors.default" never happens."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s"


def setup_logging(log_dir: Path, level: str = "INFO", stderr: bool = False) -> Path:
    """Configure the root logger. Returns the log file's path."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "carnation.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_carnation", False):
            root.removeHandler(handler)
            handler.close()
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=5_000_000, backupCount=5, encoding="utf-8")
    handlers: list[logging.Handler] = [file_handler]
    if stderr:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._carnation = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # Per-run INFO lines from APScheduler would drown the log at thousands of runs a minute; history has them.
    logging.getLogger("apscheduler.executors").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("apscheduler.scheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return path
