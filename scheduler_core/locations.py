"""Where carnation keeps things by default (XDG on Linux, the platform's own places elsewhere)."""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP_NAME = "carnation"


def data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME)


def config_dir() -> Path:
    return platformdirs.user_config_path(APP_NAME)


def log_dir() -> Path:
    return platformdirs.user_log_path(APP_NAME)


def default_config_file() -> Path:
    return config_dir() / "config.toml"


def default_db_url() -> str:
    return f"sqlite:///{data_dir() / 'carnation.db'}"
