"""👍/👎 on Telegram: presses are stored, toasted and shown; forged or stale ones change nothing;
buttons keep working after a restart."""

from __future__ import annotations

from typing import Any

from adapters.telegram.adapter import FORGED, TelegramAdapter
from bot.app import Core, build_core
from bot.generation import ScriptedGenerator
from bot.settings import Settings
from bot.types import Vote
from tests.fakes.common import running
from tests.fakes.telegram_server import FakeTelegram, bot_settings


async def press(tg: FakeTelegram, user: dict[str, Any], message: dict[str, Any], vote: Vote) -> str:
    """Press 👍 or 👎 under ``message``; returns the toast the presser saw."""
    button = message["reply_markup"]["inline_keyboard"][0][0 if vote is Vote.UP else 1]
    return await press_data(tg, user, message, button["callback_data"])


async def press_data(
    tg: FakeTelegram,
    user: dict[str, Any],
    message: dict[str, Any],
    data: str,
    *,
    inaccessible: bool = False,
) -> str:
    """A press carrying ``data``, whatever the message's buttons say; returns the toast."""
    start = len(tg.calls)
    query_id = tg.push_callback(user, message, data, inaccessible=inaccessible)
    answered = await tg.wait_for(
        lambda c: c.method == "answerCallbackQuery" and c.params["callback_query_id"] == query_id,
        start=start,
    )
    return str(answered.params["text"])


def labels(tg: FakeTelegram, chat_id: int) -> list[str]:
    keyboard = tg.bot_messages(chat_id)[-1]["reply_markup"]["inline_keyboard"]
    return [button["text"] for button in keyboard[0]]


async def settle(tg: FakeTelegram, chat_id: int, expected: list[str]) -> None:
    await tg.wait_until(lambda: labels(tg, chat_id) == expected)


async def test_a_press_is_stored_toasted_changed_and_retracted(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    ann = tg.user(1001)
    tg.push_text(tg.private_chat(ann), ann, "Hello")
    exchange = (await tg.reply(1001)).exchange_id
    message = tg.bot_messages(1001)[-1]

    assert await press(tg, ann, message, Vote.UP) == "Thanks! Rated 👍."
    await settle(tg, 1001, ["👍 1 ✓", "👎"])
    assert await core.repo.user_vote(exchange, "telegram:1001") is Vote.UP

    assert await press(tg, ann, message, Vote.DOWN) == "Changed your rating to 👎."
    await settle(tg, 1001, ["👍", "👎 1 ✓"])
    assert await core.repo.user_vote(exchange, "telegram:1001") is Vote.DOWN

    assert await press(tg, ann, message, Vote.DOWN) == "Rating removed."
    await settle(tg, 1001, ["👍", "👎"])
    assert await core.repo.user_vote(exchange, "telegram:1001") is None


async def test_group_buttons_count_every_member_once(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    group = tg.group(-100500)
    ann, bob = tg.user(1001, "Ann"), tg.user(1002, "Bob")
    tg.push_text(group, ann, "/new@selftune_bot")
    await tg.wait_for(lambda c: c.method == "sendMessage" and c.ok)
    tg.push_text(group, ann, "@selftune_bot hi")
    exchange = (await tg.reply(-100500)).exchange_id
    message = tg.bot_messages(-100500)[-1]
    await press(tg, ann, message, Vote.UP)
    await press(tg, bob, message, Vote.UP)
    await press(tg, bob, message, Vote.UP)  # Bob takes his back
    await press(tg, bob, message, Vote.DOWN)
    await settle(tg, -100500, ["👍 1", "👎 1"])  # no ✓: the group sees one keyboard
    assert await core.repo.user_vote(exchange, "telegram:1001") is Vote.UP
    assert await core.repo.user_vote(exchange, "telegram:1002") is Vote.DOWN


async def test_forged_and_stale_presses_change_nothing(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    ann, eve = tg.user(1001, "Ann"), tg.user(1002, "Eve")
    tg.push_text(tg.private_chat(ann), ann, "Hello")
    ann_exchange = (await tg.reply(1001)).exchange_id
    tg.push_text(tg.private_chat(eve), eve, "Hi")
    await tg.reply(1002)
    eve_message = tg.bot_messages(1002)[-1]

    assert await press_data(tg, eve, eve_message, "rate:oops") == FORGED
    assert await press_data(tg, eve, eve_message, "something else entirely") == FORGED
    # Data that is not on the pressed message's buttons (another reply's, a made-up one).
    assert await press_data(tg, eve, eve_message, f"rate:{ann_exchange}:1") == FORGED
    # An old message Telegram no longer shows us: the core still checks the chat.
    unknown = "That reply is unknown here; nothing changed."
    for data in (f"rate:{ann_exchange}:1", "rate:999999:1"):
        assert await press_data(tg, eve, eve_message, data, inaccessible=True) == unknown

    # Stale: the reply was deleted by /forget; its buttons are still on screen.
    eve_exchange = tg.finals(1002)[-1].exchange_id
    tg.push_text(tg.private_chat(eve), eve, "/forget")
    await tg.wait_for(lambda c: c.ok and c.text is not None and c.text.startswith("Done"))
    assert await press(tg, eve, eve_message, Vote.UP) == unknown

    counts = await core.repo.stats.counts()
    assert (counts.ups, counts.downs) == (0, 0)
    assert await core.repo.user_vote(ann_exchange, "telegram:1002") is None
    assert await core.repo.user_vote(eve_exchange, "telegram:1002") is None
    assert not tg.calls_to("editMessageReplyMarkup")


async def test_buttons_keep_working_after_a_restart(settings: Settings, tg: FakeTelegram) -> None:
    ann = tg.user(1001)
    chat = tg.private_chat(ann)
    first = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    try:
        async with running(TelegramAdapter(first.service, bot_settings(tg))):
            tg.push_text(chat, ann, "Remember this")
            exchange = (await tg.reply(1001)).exchange_id
    finally:
        await first.aclose()
    message = tg.bot_messages(1001)[-1]

    second = await build_core(settings, generator=ScriptedGenerator(), progress=False, lock=True)
    try:
        async with running(TelegramAdapter(second.service, bot_settings(tg))):
            assert await press(tg, ann, message, Vote.UP) == "Thanks! Rated 👍."
            await settle(tg, 1001, ["👍 1 ✓", "👎"])
        assert await second.repo.user_vote(exchange, "telegram:1001") is Vote.UP
    finally:
        await second.aclose()
