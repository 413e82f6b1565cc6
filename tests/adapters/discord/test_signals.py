"""Signals besides 👍/👎 over the fake Discord server: a 🔄 press, a reaction and a /better
reply each land as stored training data and in ``selftune export``."""

from __future__ import annotations

import asyncio

from adapters.discord.rating import FORGED
from bot.app import Core
from bot.chat import signals
from bot.types import Vote
from tests.adapters.discord.test_ratings import answered, press, private_answer
from tests.fakes.discord_server import FakeDiscord, Json
from tests.support.exports import exported
from tests.support.records import Script


def exchange_of(fake: FakeDiscord, message: Json) -> int:
    return int(fake.buttons(fake.messages[int(message["id"])])[0][1].split(":")[1])


async def first_reply(fake: FakeDiscord, script: Script) -> tuple[int, Json]:
    script.text = "Lyon"
    reply = await answered(fake, fake.alice)
    return exchange_of(fake, reply), reply


async def test_another_reply_is_written_over_the_old_one_and_a_vote_makes_a_pair(
    bot: Core, fake: FakeDiscord, script: Script
) -> None:
    first, reply = await first_reply(fake, script)
    dm = int(reply["channel_id"])
    assert fake.buttons(reply)[2] == ("🔄", f"again:{first}")
    script.text = "Paris"
    record = await fake.click(reply, f"again:{first}", fake.alice)

    def rewritten() -> Json:
        message = fake.messages[int(reply["id"])]
        done = message["content"] == "Paris" and exchange_of(fake, message) != first
        return message if done else {}

    shown = await fake.wait_for(rewritten)
    assert record.acked_at is not None and record.acked_at - record.created < 3.0
    assert [m["id"] for m in fake.bot_messages(dm)] == [reply["id"]]  # the same message
    again = exchange_of(fake, shown)
    assert [cid for _, cid in fake.buttons(shown)] == [
        f"rate:{again}:1",
        f"rate:{again}:-1",
        f"again:{again}",
    ]

    assert await press(fake, shown, 1, fake.alice) == "Thanks! Rated 👎."
    [pair] = await exported(bot.settings, pairs=True)
    assert pair["chosen"] == [{"role": "assistant", "content": "Lyon"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Paris"}]
    assert (pair["chosen_exchange_id"], pair["rejected_exchange_id"]) == (first, again)
    assert pair["user_key"] == f"discord:{fake.alice.id}"


async def test_a_refused_again_press_is_answered_privately(
    bot: Core, fake: FakeDiscord, script: Script
) -> None:
    _, reply = await first_reply(fake, script)
    record = await fake.click(reply, "again:424242", fake.alice)  # not on its buttons
    assert await private_answer(fake, record) == FORGED
    # A button of ours naming a reply that is not (any longer) here: the core refuses it.
    planted = fake.plant_bot_message(int(reply["channel_id"]), "old", ["again:424242"])
    record = await fake.click(planted, "again:424242", fake.alice)
    assert await private_answer(fake, record) == "That reply is unknown here; nothing changed."
    assert fake.messages[int(reply["id"])]["content"] == "Lyon"
    assert fake.messages[int(planted["id"])]["content"] == "old"


async def test_reactions_count_as_votes(bot: Core, fake: FakeDiscord, script: Script) -> None:
    exchange, reply = await first_reply(fake, script)
    user_key = f"discord:{fake.alice.id}"

    async def vote_is(vote: Vote | None) -> None:
        async def check() -> bool:
            return await bot.repo.user_vote(exchange, user_key) is vote

        for _ in range(250):
            if await check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the vote never became {vote}")

    await fake.react(fake.alice, reply, "🔥")
    await vote_is(Vote.UP)
    [row] = await exported(bot.settings, pairs=False)
    assert row["label"] is True and row["exchange_id"] == exchange
    await fake.react(fake.alice, reply, "😡")  # replaces the vote
    await vote_is(Vote.DOWN)
    await fake.react(fake.alice, reply, "🔥", remove=True)  # not the vote now: kept
    await fake.react(fake.alice, reply, "😡", remove=True)  # withdraws it
    await vote_is(None)
    assert await exported(bot.settings, pairs=False) == []


async def test_better_as_a_reply_is_a_liked_reply_and_a_pair(
    bot: Core, fake: FakeDiscord, script: Script
) -> None:
    exchange, reply = await first_reply(fake, script)
    dm = int(reply["channel_id"])
    await fake.user_says(fake.alice, "/better Paris")  # not a reply: refused
    await fake.wait_for(
        lambda: any(m["content"] == signals.NOT_A_REPLY for m in fake.bot_messages(dm))
    )
    await fake.user_says(fake.alice, "/better Paris is the capital.", reply_to=reply)
    await fake.wait_for(lambda: any(m["content"] == signals.THANKS for m in fake.bot_messages(dm)))

    [pair] = await exported(bot.settings, pairs=True)
    assert pair["chosen"] == [{"role": "assistant", "content": "Paris is the capital."}]
    assert pair["rejected_exchange_id"] == exchange and pair["correction"] is True
    [liked] = await exported(bot.settings, pairs=False)
    assert liked["label"] is True and liked["user_key"] == f"discord:{fake.alice.id}"
