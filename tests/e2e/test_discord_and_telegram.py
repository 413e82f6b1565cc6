"""One process, both platforms: the Telegram and Discord adapters run in one TaskGroup on one
event loop over one core, as ``selftune run`` does when both tokens are configured."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from adapters.discord.adapter import DiscordAdapter
from adapters.telegram.adapter import TelegramAdapter
from bot.app import Core, make_adapters
from bot.settings import Settings
from tests.fakes.discord_server import FakeDiscord, discord_settings
from tests.fakes.telegram_server import FakeTelegram

Served = TelegramAdapter | DiscordAdapter


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeDiscord, tg: FakeTelegram) -> Settings:
    return discord_settings(
        tmp_path / "data",
        fake,
        TELEGRAM_BOT_TOKEN=tg.token,
        SELFTUNE_TELEGRAM__BASE_URL=tg.base_url,
        SELFTUNE_TELEGRAM__BASE_FILE_URL=tg.base_file_url,
    )


@contextlib.asynccontextmanager
async def serving(adapters: Sequence[Served]) -> AsyncIterator[None]:
    """Run the adapters the way bot.app.serve does (one TaskGroup), until the block ends."""

    async def serve() -> None:
        async with asyncio.TaskGroup() as group:
            for adapter in adapters:
                group.create_task(adapter.run(), name=adapter.platform)

    task = asyncio.create_task(serve())
    try:
        for adapter in adapters:
            waiting = asyncio.ensure_future(adapter.ready.wait())
            await asyncio.wait({waiting, task}, timeout=10, return_when="FIRST_COMPLETED")
            waiting.cancel()
            if task.done():
                task.result()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_both_platforms_answer_in_one_process(
    core: Core, fake: FakeDiscord, tg: FakeTelegram
) -> None:
    built = make_adapters(core, "run")
    adapters = [a for a in built if isinstance(a, TelegramAdapter | DiscordAdapter)]
    assert sorted(a.platform for a in adapters) == ["discord", "telegram"] and built == adapters
    async with serving(adapters):
        ann = tg.user(1001)
        tg.push_text(tg.private_chat(ann), ann, "Hello from Telegram")
        await fake.user_says(fake.alice, "Hello from Discord")
        dm = fake.dm_channel(fake.alice)
        await tg.wait_until(lambda: bool(tg.finals(1001)), within=10)
        await fake.wait_for(lambda: [m for m in fake.bot_messages(dm) if m["components"]])
        # The core's own messages reach each platform through the shared outbox.
        await core.outbox.send("telegram:1001", "Training finished.")
        await core.outbox.send(f"discord:{dm}", "Training finished.")
        await tg.wait_until(
            lambda: any(m.get("text") == "Training finished." for m in tg.bot_messages(1001))
        )
        await fake.wait_for(lambda: fake.bot_messages(dm)[-1]["content"] == "Training finished.")
    telegram = await core.repo.history("telegram:1001", 10)
    discord = await core.repo.history(f"discord:{dm}", 10)
    assert [m.content for m in telegram] == ["Hello from Telegram", "You said: Hello from Telegram"]
    assert [m.content for m in discord] == ["Hello from Discord", "You said: Hello from Discord"]
