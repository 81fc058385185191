"""Schema migrations (alembic), run programmatically: carnation upgrades its own database on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

HERE = Path(__file__).parent
VERSION_TABLE = "carnation_alembic_version"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(engine), revision)
    except Exception:
        # Two processes starting on a new database race to create the tables; the loser finds them made.
        command.upgrade(alembic_config(engine), revision)
