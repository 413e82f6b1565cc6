"""Alembic migrations, configured from ``[tool.alembic]`` in pyproject.toml and run from code."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"


def alembic_config(url: str | None = None) -> Config:
    """The Alembic config: pyproject.toml when it is there (a checkout), else built in code."""
    config = Config(toml_file=str(PYPROJECT)) if PYPROJECT.is_file() else Config()
    config.set_main_option("script_location", str(HERE))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest migration's revision id (None when there are no migrations)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_database(engine: AsyncEngine) -> str | None:
    """Apply every pending migration on ``engine``; returns the revision before upgrading.

    On SQLite, foreign keys are off while migrating (as Alembic's batch mode asks): a batch
    migration copies a table and drops the old one, and with foreign keys on that drop deletes
    the rows of every table whose key cascades to it (every rating of the exchanges) or fails.
    The keys are checked once the migrations are done, before they are committed.
    """
    async with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # a pragma that has no effect inside a transaction: set it before
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.commit()
        try:
            before = await connection.run_sync(_current)
            await connection.run_sync(_upgrade)
            if sqlite:
                broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if broken:
                    raise RuntimeError(f"the migrated database breaks foreign keys: {broken[:3]}")
            await connection.commit()
        finally:
            if sqlite:
                await connection.rollback()
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()
    return before
