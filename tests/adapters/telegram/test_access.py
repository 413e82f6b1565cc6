"""Blocked users on Telegram (over the fake Bot API): one notice, then nothing; their button
presses are refused and never stored."""

from __future__ import annotations

import asyncio

import pytest

from adapters.telegram.adapter import TelegramAdapter
from bot.app import Core
from bot.chat.access import BLOCKED
from bot.settings import AccessSettings, Settings
from bot.types import Vote
from tests.adapters.telegram.test_ratings import press
from tests.fakes.telegram_server import FakeTelegram


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Eve (1003) is blocked in the configuration."""
    return settings.model_copy(update={"access": AccessSettings(block_users=["telegram:1003"])})


def sent_to(tg: FakeTelegram, chat_id: int) -> int:
    return len(tg.calls_to("sendMessage", chat_id=chat_id))


async def test_a_user_blocked_in_the_database(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    ann, bob = tg.user(1001, "Ann"), tg.user(1002, "Bob")
    tg.push_text(tg.private_chat(bob), bob, "Hello")
    answered = await tg.reply(1002)
    reply_message = tg.bot_messages(1002)[-1]
    await core.repo.curation.set_user("telegram:1002", "telegram:1", blocked=True)  # dashboard

    start = len(tg.calls)
    tg.push_text(tg.private_chat(bob), bob, "Still there?")
    notice = await tg.reply(1002, start=start, rated=False)
    assert notice.params["text"] == BLOCKED and "reply_markup" not in notice.params
    before, typing = sent_to(tg, 1002), len(tg.calls_to("sendChatAction", chat_id=1002))
    for text in ("Hello?", "/help", "/good"):
        tg.push_text(tg.private_chat(bob), bob, text)
    tg.push_text(tg.private_chat(ann), ann, "Hi")
    await tg.reply(1001)
    await asyncio.sleep(0.3)  # updates are handled concurrently: give Bob's their time
    assert sent_to(tg, 1002) == before  # nothing more, not even "typing"
    assert len(tg.calls_to("sendChatAction", chat_id=1002)) == typing

    assert await press(tg, bob, reply_message, Vote.UP) == BLOCKED
    assert await core.repo.user_vote(answered.exchange_id, "telegram:1002") is None
    history = await core.repo.history("telegram:1002", 50)
    assert [m.content for m in history if m.role == "user"] == ["Hello"]


async def test_a_user_blocked_in_the_configuration_in_a_group(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    group = tg.group(-100500)
    ann, eve = tg.user(1001, "Ann"), tg.user(1003, "Eve")
    tg.push_text(group, ann, "@selftune_bot hi")
    answered = await tg.reply(-100500)
    message = tg.bot_messages(-100500)[-1]

    start = len(tg.calls)
    tg.push_text(group, eve, "@selftune_bot hi")
    notice = await tg.reply(-100500, start=start, rated=False)
    assert notice.params["text"] == BLOCKED
    before = sent_to(tg, -100500)
    tg.push_text(group, eve, "@selftune_bot answer me")
    await asyncio.sleep(0.3)
    assert sent_to(tg, -100500) == before

    assert await press(tg, eve, message, Vote.DOWN) == BLOCKED
    assert await core.repo.user_vote(answered.exchange_id, "telegram:1003") is None
    assert await press(tg, ann, message, Vote.UP) == "Thanks! Rated 👍."


async def test_a_told_users_photos_and_edits_get_nothing_either(
    core: Core, tg: FakeTelegram, bot: TelegramAdapter
) -> None:
    """The "I can only read text" and "not edits" notes are answers too: a user already told
    of their block hears neither."""
    bob = tg.user(1002, "Bob")
    await core.repo.curation.set_user("telegram:1002", "telegram:1", blocked=True)
    start = len(tg.calls)
    tg.push_text(tg.private_chat(bob), bob, "Hello")
    assert (await tg.reply(1002, start=start, rated=False)).params["text"] == BLOCKED
    before = sent_to(tg, 1002)
    photo = [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]
    tg.push({"message": tg.message(tg.private_chat(bob), bob, photo=photo)})
    edit = {**tg.message(tg.private_chat(bob), bob, "Hello!"), "edit_date": 1}
    tg.push({"edited_message": edit})
    ann = tg.user(1001, "Ann")
    tg.push_text(tg.private_chat(ann), ann, "Hi")
    await tg.reply(1001)
    await asyncio.sleep(0.3)  # updates are handled concurrently: give Bob's their time
    assert sent_to(tg, 1002) == before
