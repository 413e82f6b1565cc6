"""👍/👎 on Discord: presses are stored with Telegram's vote rules, counts show on the buttons,
forged ids change nothing, and buttons keep working after the bot restarts."""

from __future__ import annotations

from bot.app import Core, build_core
from bot.generation import ScriptedGenerator
from bot.settings import Settings
from bot.types import Vote
from tests.fakes.discord_server import (
    EPHEMERAL,
    FakeDiscord,
    FakeInteraction,
    FakeUser,
    Json,
    run_bot,
)


async def answered(fake: FakeDiscord, user: FakeUser, channel_id: int | None = None) -> Json:
    """Have ``user`` ask something (in their DM, or mentioning the bot in a channel); returns
    the bot's final reply, the message carrying the buttons."""
    await fake.user_says(user, "rate me", channel_id=channel_id, mention_bot=channel_id is not None)
    channel = channel_id if channel_id is not None else fake.dm_channel(user)
    done = len([m for m in fake.bot_messages(channel) if m["components"]])
    found = await fake.wait_for(
        lambda: [m for m in fake.bot_messages(channel) if m["components"]][done:]
    )
    return found[0]


async def press(fake: FakeDiscord, reply: Json, which: int, user: FakeUser) -> str:
    """Press 👍 (0) or 👎 (1) on ``reply``; returns the private answer the presser sees."""
    custom_id = fake.buttons(fake.messages[int(reply["id"])])[which][1]
    record = await fake.click(reply, custom_id, user)
    return await private_answer(fake, record)


async def private_answer(fake: FakeDiscord, record: FakeInteraction) -> str:
    [answer] = await fake.wait_answered(record)
    assert answer["flags"] & EPHEMERAL
    assert record.acked_at is not None and record.acked_at - record.created < 3.0
    return str(answer["content"])


def labels(fake: FakeDiscord, reply: Json) -> list[str]:
    return [label for label, _ in fake.buttons(fake.messages[int(reply["id"])])]


async def test_vote_is_stored_changed_and_retracted(bot: Core, fake: FakeDiscord) -> None:
    reply = await answered(fake, fake.alice)
    exchange_id = int(fake.buttons(reply)[0][1].split(":")[1])
    user_key = f"discord:{fake.alice.id}"
    assert await press(fake, reply, 0, fake.alice) == "Thanks! Rated 👍."
    assert await bot.repo.user_vote(exchange_id, user_key) is Vote.UP
    assert labels(fake, reply) == ["👍 1", "👎 0", "🔄"]
    assert await press(fake, reply, 1, fake.alice) == "Changed your rating to 👎."
    assert await bot.repo.user_vote(exchange_id, user_key) is Vote.DOWN
    assert labels(fake, reply) == ["👍 0", "👎 1", "🔄"]
    assert await press(fake, reply, 1, fake.alice) == "Rating removed."
    assert await bot.repo.user_vote(exchange_id, user_key) is None
    assert labels(fake, reply) == ["👍 0", "👎 0", "🔄"]
    # A button press is acknowledged as a deferred update, then answered privately.
    record = list(fake.interactions.values())[-1]
    assert [c["type"] for c in record.callbacks] == [6]


async def test_votes_of_several_users_are_counted(bot: Core, fake: FakeDiscord) -> None:
    reply = await answered(fake, fake.alice, fake.channel_id)
    await press(fake, reply, 0, fake.alice)
    await press(fake, reply, 0, fake.bob)
    await press(fake, reply, 1, fake.root)
    assert labels(fake, reply) == ["👍 2", "👎 1", "🔄"]
    counts = await bot.repo.stats.counts()
    assert (counts.ups, counts.downs) == (2, 1)


async def test_forged_ids_change_nothing_and_are_explained(bot: Core, fake: FakeDiscord) -> None:
    in_dm = await answered(fake, fake.alice)
    in_channel = await answered(fake, fake.bob, fake.channel_id)
    dm_exchange = fake.buttons(in_dm)[0][1]  # rate:<dm exchange>:1
    # An id that is not on the pressed message at all.
    record = await fake.click(in_channel, "rate:424242:1", fake.bob)
    assert "not one of mine" in await private_answer(fake, record)
    # A message altered to carry another chat's exchange: refused by the chat check.
    stored = fake.messages[int(in_channel["id"])]
    stored["components"][0]["components"][0]["custom_id"] = dm_exchange
    record = await fake.click(in_channel, dm_exchange, fake.bob)
    assert "unknown here" in await private_answer(fake, record)
    # A malformed id on the message, and a foreign one.
    for forged in ("rate:abc:1", "rate:1:7", "something-else"):
        stored["components"][0]["components"][0]["custom_id"] = forged
        record = await fake.click(in_channel, forged, fake.bob)
        assert "not one of mine" in await private_answer(fake, record)
    counts = await bot.repo.stats.counts()
    assert (counts.ups, counts.downs) == (0, 0)
    assert labels(fake, in_dm) == ["👍 0", "👎 0", "🔄"]


async def test_buttons_keep_working_after_a_restart(settings: Settings, fake: FakeDiscord) -> None:
    first = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    try:
        async with run_bot(first.service, settings, fake):
            reply = await answered(fake, fake.alice)
    finally:
        await first.aclose()
    second = await build_core(settings, generator=ScriptedGenerator(), progress=False, lock=True)
    try:
        async with run_bot(second.service, settings, fake):
            assert await press(fake, reply, 0, fake.bob) == "Thanks! Rated 👍."
        exchange_id = int(fake.buttons(reply)[0][1].split(":")[1])
        assert await second.repo.user_vote(exchange_id, f"discord:{fake.bob.id}") is Vote.UP
        assert labels(fake, reply) == ["👍 1", "👎 0", "🔄"]
    finally:
        await second.aclose()
