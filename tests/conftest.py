"""Shared fixtures: settings in a temp data dir, a migrated database, tiny and real models."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import Core, build_core
from bot.generation import ScriptedGenerator
from bot.settings import Settings, load_settings
from migrations import upgrade_database
from storage.db import create_engine
from storage.repository import Repository
from tests.support.pg import PostgresUnavailable, start_temp_postgres
from tests.support.records import Script


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Defaults, with data in a fresh temp dir and the environment ignored."""
    loaded, _ = load_settings(None, {"SELFTUNE_DATA_DIR": str(tmp_path / "data")})
    return loaded


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a small BPE tokenizer and a chat template, saved to a directory."""
    from tests.support.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def script() -> Script:
    """Set ``script.text`` for what the model says next; unset, it echoes as always."""
    return Script()


@pytest.fixture
def scripted(request: pytest.FixtureRequest, script: Script) -> ScriptedGenerator:
    """The core's model, saying what ``script`` says; seconds per word come from ``indirect``
    parametrisation (none by default)."""
    return ScriptedGenerator(script, delay_s=getattr(request, "param", 0.0))


@pytest.fixture
async def core(settings: Settings, scripted: ScriptedGenerator) -> AsyncIterator[Core]:
    """The real core (migrated SQLite in a temp dir, services) with a scripted generator."""
    built = await build_core(settings, generator=scripted, progress=False)
    yield built
    await built.aclose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server: ``PYTEST_POSTGRES_URL`` or a throwaway one."""
    given = os.environ.get("PYTEST_POSTGRES_URL")
    if given:
        yield given
        return
    try:
        server = start_temp_postgres()
    except PostgresUnavailable as exc:
        if os.environ.get("PYTEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here (PYTEST_REQUIRE_POSTGRES=1): {exc}")
        pytest.skip(f"no PostgreSQL: {exc}")
    yield server.url
    server.stop()


async def _fresh_postgres_database(server_url: str) -> str:
    name = f"selftune_test_{uuid.uuid4().hex[:12]}"
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return str(make_url(server_url).set(database=name).render_as_string(hide_password=False))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: SQLite in a temp file, and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    server_url: str = request.getfixturevalue("postgres_server")
    return await _fresh_postgres_database(server_url)


@pytest.fixture
async def repo(db_url: str) -> AsyncIterator[Repository]:
    """A migrated repository on each backend."""
    engine = create_engine(db_url)
    await upgrade_database(engine)
    repository = Repository(engine)
    yield repository
    await repository.aclose()
