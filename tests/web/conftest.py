"""Fixtures of the dashboard tests: a seeded world and an aiohttp test client, logged in or
not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.web.passwords import hash_password
from migrations import upgrade_database
from storage.db import create_engine
from storage.repository import Repository
from tests.web.support import ADMIN, World, build_world, web_settings

PASSWORD = "correct horse"
PASSWORD_HASH = hash_password(PASSWORD)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'web.db'}")
    await upgrade_database(engine)
    repo = Repository(engine)
    settings = web_settings(tmp_path, password_hash=PASSWORD_HASH, metrics_token="scrape-me")
    yield await build_world(repo, settings, tmp_path)
    await repo.aclose()


@pytest.fixture
async def client(world: World) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A client with no session."""
    async with TestClient(TestServer(world.dashboard.app)) as anonymous:
        yield anonymous


@pytest.fixture
async def admin(
    world: World, client: TestClient[web.Request, web.Application]
) -> TestClient[web.Request, web.Application]:
    """The same client, logged in by a one-time link."""
    await login_by_link(client, world.dashboard.issue_login_link(ADMIN))
    return client


async def login_by_link(client: TestClient[web.Request, web.Application], link: str) -> int:
    """Open the link's page and press its button; the status of the POST."""
    parts = urlsplit(link)
    page = await client.get(f"{parts.path}?{parts.query}")
    token = parts.query.removeprefix("t=")
    response = await client.post("/login/link", data={"t": unquote(token)}, allow_redirects=False)
    assert page.status in (200, 403)
    return response.status
