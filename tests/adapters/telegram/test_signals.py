"""Signals besides 👍/👎 over the fake Telegram server: a 🔄 press, a reaction and a /better
reply each land as stored training data and in ``selftune export``."""

from __future__ import annotations

import asyncio
import html
from typing import Any

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.signals import WRITING
from bot.app import Core
from bot.chat import signals
from bot.types import Vote
from tests.adapters.telegram.test_ratings import press, press_data
from tests.fakes.telegram_server import FakeTelegram
from tests.support.exports import exported
from tests.support.records import Script


async def first_reply(tg: FakeTelegram, script: Script, ann: dict[str, Any]) -> tuple[int, Any]:
    """Ann asks in her private chat; the bot answers "Lyon": (exchange id, the message)."""
    script.text = "Lyon"
    tg.push_text(tg.private_chat(ann), ann, "Capital of France?")
    exchange = (await tg.reply(ann["id"])).exchange_id
    return exchange, tg.bot_messages(ann["id"])[-1]


async def test_another_reply_is_written_over_the_old_one_and_a_vote_makes_a_pair(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    ann = tg.user(1001)
    first, message = await first_reply(tg, script, ann)
    script.text = "Paris"
    start = len(tg.calls)
    assert await press_data(tg, ann, message, f"again:{first}") == WRITING
    final = await tg.wait_for(lambda c: c.ok and c.rated and c.exchange_id != first, start=start)
    # Streamed in place: the same message edited, no new message sent.
    assert final.method == "editMessageText"
    assert final.params["message_id"] == message["message_id"]
    assert not tg.calls_to("sendMessage", chat_id=1001)[1:]
    [shown] = tg.bot_messages(1001)
    assert shown["text"] == "Paris"
    assert [b["callback_data"] for b in final.buttons] == [
        f"rate:{final.exchange_id}:1",
        f"rate:{final.exchange_id}:-1",
        f"again:{final.exchange_id}",
    ]

    assert await press(tg, ann, shown, Vote.UP) == "Thanks! Rated 👍."
    [pair] = await exported(core.settings, pairs=True)
    assert pair["chosen"] == [{"role": "assistant", "content": "Paris"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Lyon"}]
    assert pair["prompt"][-1] == {"role": "user", "content": "Capital of France?"}
    assert (pair["chosen_exchange_id"], pair["rejected_exchange_id"]) == (final.exchange_id, first)
    assert pair["user_key"] == "telegram:1001"


async def test_a_forged_again_press_writes_nothing(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    ann = tg.user(1001)
    first, message = await first_reply(tg, script, ann)
    assert await press_data(tg, ann, message, f"again:{first + 1}") != WRITING
    assert await press_data(tg, ann, message, f"again:{first}", inaccessible=True) == WRITING
    await tg.wait_until(lambda: len(tg.finals(1001)) == 2)
    assert (await core.repo.signals.counts()).regenerations == 1


async def test_reactions_are_asked_for_and_count_as_votes(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    ann = tg.user(1001)
    exchange, message = await first_reply(tg, script, ann)
    # The fake, as Telegram, sends reactions only to a bot that asks for them.
    assert tg.allowed_updates is not None and "message_reaction" in tg.allowed_updates

    tg.push_reaction(ann, message, ["❤"])
    await _vote_is(core, exchange, Vote.UP)
    [row] = await exported(core.settings, pairs=False)
    assert row["label"] is True and row["exchange_id"] == exchange
    assert row["completion"] == [{"role": "assistant", "content": "Lyon"}]

    tg.push_reaction(ann, message, ["👎"], old=["❤"])  # replaces the vote
    await _vote_is(core, exchange, Vote.DOWN)
    tg.push_reaction(ann, message, [], old=["👎"])  # withdraws it
    await _vote_is(core, exchange, None)
    assert await exported(core.settings, pairs=False) == []


async def _vote_is(core: Core, exchange: int, vote: Vote | None) -> None:
    """Wait (up to 5 s) until Ann's stored vote is ``vote`` (a reaction gets no answer)."""
    for _ in range(250):
        if await core.repo.user_vote(exchange, "telegram:1001") is vote:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the vote never became {vote}")


async def test_better_as_a_reply_is_a_liked_reply_and_a_pair(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter, script: Script
) -> None:
    ann = tg.user(1001)
    chat = tg.private_chat(ann)
    exchange, message = await first_reply(tg, script, ann)

    start = len(tg.calls)
    tg.push_text(chat, ann, "/better Paris")  # not a reply: refused
    refused = await tg.reply(1001, start=start, rated=False)
    assert html.unescape(refused.text or "") == signals.NOT_A_REPLY

    start = len(tg.calls)
    tg.push_text(chat, ann, "/better Paris is the capital of France.", reply_to=message)
    thanks = await tg.reply(1001, start=start, rated=False)
    assert thanks.text == signals.THANKS

    [pair] = await exported(core.settings, pairs=True)
    assert pair["chosen"] == [{"role": "assistant", "content": "Paris is the capital of France."}]
    assert pair["rejected_exchange_id"] == exchange and pair["correction"] is True
    [liked] = await exported(core.settings, pairs=False)
    assert liked["label"] is True and liked["user_key"] == "telegram:1001"
    assert liked["completion"][0]["content"] == "Paris is the capital of France."
