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


_ROWS_AT_0005 = [
    "INSERT INTO users (id, key, platform, name, training_opt_out, created_at)"
    " VALUES (1, 'telegram:1', 'telegram', 'Ann', false, CURRENT_TIMESTAMP)",
    "INSERT INTO chats (id, key, platform, conversation, created_at)"
    " VALUES (1, 'telegram:1', 'telegram', 1, CURRENT_TIMESTAMP)",
    "INSERT INTO messages (id, chat_id, user_id, conversation, role, content, created_at)"
    " VALUES (1, 1, 1, 1, 'user', 'hi', CURRENT_TIMESTAMP)",
    "INSERT INTO exchanges (id, chat_id, user_id, request_message_id, prompt, completion,"
    " model_name, params, status, training_excluded, created_at)"
    " VALUES (1, 1, 1, 1, '[]', 'Hello', 'm', '{}', 'done', false, CURRENT_TIMESTAMP)",
    "INSERT INTO ratings (id, exchange_id, user_id, value, created_at, updated_at)"
    " VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    'INSERT INTO training_runs (id, status, "trigger", message, report, started_at)'
    " VALUES (1, 'succeeded', 'command', '', '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO adapter_versions (version, path, status, base_model, exchange_ids, metrics,"
    " hyperparams, tainted, training_run_id, created_at)"
    " VALUES (1, '/a/v0001', 'active', 'm', '[1]', '{}', '{}', false, 1, CURRENT_TIMESTAMP)",
]


async def test_an_upgrade_keeps_every_row_of_a_used_database(db_url: str) -> None:
    """A database in use at 0005 (ratings, a trained version) upgraded to the head loses
    nothing: SQLite's table copies (Alembic's batch mode) must not cascade or fail on the
    foreign keys pointing at the copied table."""
    engine = create_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_to("0005"))
            for statement in _ROWS_AT_0005:
                await connection.execute(text(statement))
        assert await upgrade_database(engine) == "0005"
        async with engine.connect() as connection:
            for table in ("exchanges", "ratings", "training_runs", "adapter_versions"):
                count = await connection.scalar(text(f"SELECT count(*) FROM {table}"))
                assert count == 1, table
            assert await connection.run_sync(_diff) == []
    finally:
        await engine.dispose()
