"""Fixtures of the Telegram tests: a fake Bot API server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.telegram.adapter import TelegramAdapter
from bot.app import Core
from tests.fakes.common import running
from tests.fakes.telegram_server import FakeTelegram, bot_settings


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def edit_interval_s() -> float:
    """Seconds between the bot's edits of a streaming reply (a module may override it)."""
    return 0.0


@pytest.fixture
async def bot(
    core: Core, tg: FakeTelegram, edit_interval_s: float
) -> AsyncIterator[TelegramAdapter]:
    """The real Telegram adapter on the core, polling ``tg``; ready on entry."""
    adapter = TelegramAdapter(core.service, bot_settings(tg, edit_interval_s=edit_interval_s))
    async with running(adapter):
        yield adapter
