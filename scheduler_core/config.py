"""Settings: defaults < TOML file < CARNATION_* environment variables < command-line flags.

The TOML file is `--config PATH`, else $CARNATION_CONFIG, else config.toml in the user config dir (absent is fine).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from tzlocal import get_localzone_name

from . import locations
from .spec import _check_timezone


def _local_timezone() -> str:
    try:
        return get_localzone_name() or "UTC"
    except Exception:
        return "UTC"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARNATION_", extra="forbid", validate_default=True)

    db_url: str = Field(default_factory=locations.default_db_url, description="database URL (sqlite, mysql+pymysql, postgresql+psycopg)")
    timezone: str = Field(default_factory=_local_timezone, description="default timezone of jobs")
    workers: int = Field(10, ge=1, le=1000, description="threads that run jobs")
    misfire_grace_time: int = Field(30, ge=1, description="default seconds a late run may still start")
    coalesce: bool = Field(True, description="default: after downtime run once and record the rest as missed")
    history_keep_per_job: int | None = Field(1000, ge=1, description="runs kept per job (empty: all)")
    history_max_age_days: float | None = Field(30, gt=0, description="days runs are kept (empty: forever)")
    log_dir: Path = Field(default_factory=locations.log_dir, description="directory of carnation.log")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"], description="hosts that may execute jobs")
    shutdown_timeout: float = Field(30, ge=0, description="seconds to wait for running jobs on shutdown")
    lease_seconds: float = Field(8, gt=1, description="a dead executor is replaced within this many seconds")
    poll_interval: float = Field(0.25, gt=0, description="seconds between checks for changes made by other processes")
    python_path: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["."], description="directories python jobs are imported from (besides installed packages)")
    claim_ahead_seconds: float = Field(
        60, ge=0, description="a job firing at least twice in this many seconds has its runs claimed this far ahead "
        "(its first claim: half to one and a half times), not one write per fire (0: every fire; a takeover after "
        "a crash then runs late, rather than records as abandoned, the frequent jobs' fires of its last seconds)")
    writer_process: bool = Field(True, description="write history and next run times from a child process, off the scheduler's GIL")
    jobs: list[dict[str, Any]] = Field(default_factory=list, description="predefined jobs (Flask-APScheduler JOBS)")

    # Where this came from; not a setting itself.
    config_file: Path | None = Field(None, exclude=True)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return _check_timezone(value) or "UTC"

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @field_validator("allowed_hosts", "python_path", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        # CARNATION_ALLOWED_HOSTS=a,b as well as a JSON list.
        if isinstance(value, str):
            if value.startswith("["):
                return json.loads(value)
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_CONFIG_FILE.get())


class _ConfigFile:
    """The TOML file the next Settings() reads (pydantic-settings asks the class, not the instance)."""

    path: Path | None = None

    def get(self) -> Path | None:
        return self.path


_CONFIG_FILE = _ConfigFile()


def config_file_path(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("CARNATION_CONFIG")
    return Path(env).expanduser() if env else locations.default_config_file()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from every source; `overrides` are the command-line flags (None means not given)."""
    path = config_file_path(config_file)
    if config_file and not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    _CONFIG_FILE.path = path if path.exists() else None
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_FILE.path = None
    settings.config_file = path if path.exists() else None
    return settings


def describe_settings() -> str:
    """Every setting, its environment variable and meaning: for `carnation --help`."""
    lines = []
    for name, info in Settings.model_fields.items():
        if name == "config_file":
            continue
        lines.append(f"  {name:22} CARNATION_{name.upper():24} {info.description or ''}")
    return "\n".join(lines)
