"""Blocked users on Discord (over the fake REST + gateway): one notice, then nothing; their
button presses are refused and never stored."""

from __future__ import annotations

import asyncio

from bot.app import Core
from bot.chat.access import BLOCKED
from tests.adapters.discord.test_ratings import answered, press
from tests.fakes.discord_server import FakeDiscord, run_bot


async def test_a_blocked_user_hears_one_notice_and_their_presses_count_for_nothing(
    bot: Core, fake: FakeDiscord
) -> None:
    reply = await answered(fake, fake.bob)
    exchange_id = int(fake.buttons(reply)[0][1].split(":")[1])
    bob_key, dm = f"discord:{fake.bob.id}", fake.dm_channel(fake.bob)
    await bot.repo.curation.set_user(bob_key, "discord:1", blocked=True)  # the dashboard

    before = len(fake.bot_messages(dm))
    await fake.user_says(fake.bob, "still there?")
    notice = await fake.wait_for(lambda: fake.bot_messages(dm)[before:])
    assert [m["content"] for m in notice] == [BLOCKED] and not notice[0]["components"]
    await fake.user_says(fake.bob, "hello?")
    await fake.user_says(fake.bob, "answer me", channel_id=fake.channel_id, mention_bot=True)
    await answered(fake, fake.alice)  # others are still answered meanwhile
    await asyncio.sleep(0.3)
    assert len(fake.bot_messages(dm)) == before + 1
    assert fake.bot_messages(fake.channel_id) == []

    assert await press(fake, reply, 0, fake.bob) == BLOCKED
    assert await bot.repo.user_vote(exchange_id, bob_key) is None
    history = await bot.repo.history(f"discord:{dm}", 50)
    assert [m.content for m in history if m.role == "user"] == ["rate me"]


async def test_a_silenced_users_message_interrupted_by_a_restart_is_marked_done(
    bot: Core, fake: FakeDiscord
) -> None:
    """A recorded message the restart finds from a user already told they are blocked gets
    nothing, and is done: not fetched and handled again at every start."""
    bob_key, dm = f"discord:{fake.bob.id}", fake.dm_channel(fake.bob)
    await bot.repo.curation.set_user(bob_key, "discord:1", blocked=True)
    await fake.user_says(fake.bob, "hello?")
    await fake.wait_for(lambda: fake.bot_messages(dm))  # the one notice: silenced from now on
    pending = fake._message(dm, fake.bob, "asked before the crash")
    platform = f"discord:{fake.bot.id}"
    await bot.service.deliveries.receive_one(
        platform, pending["id"], {"channel_id": str(dm), "guild_id": ""}
    )
    async with run_bot(bot.service, bot.settings, fake):  # the next start recovers it
        for _ in range(50):
            if not await bot.service.deliveries.unfinished(platform):
                break
            await asyncio.sleep(0.05)
    assert await bot.service.deliveries.unfinished(platform) == []
    assert len(fake.bot_messages(dm)) == 1  # still the one notice
