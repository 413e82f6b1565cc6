"""Alembic: the models and the migrations agree (drift test), and the chain goes both ways."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from migrations import PYPROJECT, alembic_config, head_revision, upgrade_database
from storage.db import create_engine
from storage.models import Base


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _downgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "base")


async def test_models_and_migrations_agree(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert await upgrade_database(engine) is None
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
        # A second start finds nothing to do.
        assert await upgrade_database(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_downgrade_to_empty_and_up_again(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade_database(engine)
        async with engine.begin() as connection:
            await connection.run_sync(_downgrade)
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
        assert set(tables) <= {"alembic_version"}
        await upgrade_database(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
    finally:
        await engine.dispose()


def test_configuration_comes_from_pyproject() -> None:
    config = alembic_config()
    assert config.toml_file_name == str(PYPROJECT)
    assert config.get_main_option("script_location", "").endswith("migrations")
    assert head_revision() is not None


def _upgrade_to(revision: str) -> Any:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return run


async def test_0003_keeps_one_running_row_of_those_a_race_left(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_to("0002"))
            for _ in range(2):
                await connection.execute(
                    text(
                        "INSERT INTO training_runs (status, trigger, message, report, started_at)"
                        " VALUES ('running', 'command', '', '{}', CURRENT_TIMESTAMP)"
                    )
                )
        await upgrade_database(engine)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT id, status, finished_at FROM training_runs ORDER BY id")
                )
            ).all()
        assert [(r.id, r.status) for r in rows] == [(1, "interrupted"), (2, "running")]
        assert rows[0].finished_at is not None and rows[1].finished_at is None
    finally:
        await engine.dispose()
