"""Fixtures of the Discord tests: a fake REST + gateway server, settings pointing at it, and
the bot connected to it over the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Core
from bot.settings import Settings
from tests.fakes.discord_server import FakeDiscord, discord_settings, run_bot


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeDiscord, request: pytest.FixtureRequest) -> Settings:
    """Indirect parametrisation passes extra DiscordSettings values."""
    return discord_settings(tmp_path / "data", fake, **getattr(request, "param", {}))


@pytest.fixture
async def bot(core: Core, fake: FakeDiscord) -> AsyncIterator[Core]:
    async with run_bot(core.service, core.settings, fake):
        yield core
