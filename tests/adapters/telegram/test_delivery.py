"""At-least-once delivery on Telegram: updates stored before they are confirmed, handled again
after a crash, and a message stored and answered once however often it comes."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import ClientSession

from adapters.telegram.adapter import TelegramAdapter
from bot.app import Core
from bot.generation import ScriptedGenerator
from bot.types import Incoming
from tests.fakes.common import running
from tests.fakes.telegram_server import BOT_ID, FakeTelegram, bot_settings
from tests.support.net import free_port

PLATFORM = f"telegram:{BOT_ID}"


def rated(tg: FakeTelegram, chat_id: int) -> list[dict[str, Any]]:
    """The bot's messages in the chat that carry 👍/👎."""
    return [m for m in tg.bot_messages(chat_id) if "rate:" in str(m.get("reply_markup", ""))]


async def stored_texts(core: Core, chat_key: str) -> list[str]:
    return [m.content for m in await core.repo.history(chat_key, 20)]


async def test_an_update_stored_before_a_crash_is_answered_at_the_next_start(
    core: Core, tg: FakeTelegram
) -> None:
    ann = tg.user(1001)
    message = tg.message(tg.private_chat(ann), ann, "Hello before the crash")
    # What a crash leaves: the update stored (and so confirmed), not handled.
    await core.repo.deliveries.receive(PLATFORM, [("7", {"update_id": 7, "message": message})])
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        final = await tg.reply(1001)
        assert final.text == "You said: Hello before the crash"
    assert await core.repo.deliveries.unfinished(PLATFORM) == []
    assert await stored_texts(core, "telegram:1001") == [
        "Hello before the crash",
        "You said: Hello before the crash",
    ]


async def test_updates_are_confirmed_only_once_stored(
    core: Core, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = core.repo.deliveries.receive_one
    failures = [1]

    async def failing_once(
        platform: str, key: str, payload: dict[str, Any], chat_key: str | None = None
    ) -> bool:
        if failures:
            failures.pop()
            raise RuntimeError("database is down")
        return await real(platform, key, payload, chat_key)

    monkeypatch.setattr(core.repo.deliveries, "receive_one", failing_once)
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        ann = tg.user(1001)
        tg.push_text(tg.private_chat(ann), ann, "Store me first")
        await tg.reply(1001)
    offsets = [c.params.get("offset", 0) for c in tg.calls_to("getUpdates")]
    # Not stored: asked again from offset 0 (unconfirmed), then stored and confirmed.
    assert offsets.count(0) >= 2 and offsets[-1] == 2
    assert len(rated(tg, 1001)) == 1


async def test_a_webhook_post_is_answered_after_the_store_and_a_repeat_is_dropped(
    core: Core, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    settings = bot_settings(tg, mode="webhook", webhook_url=url, listen="127.0.0.1", port=port)
    ann = tg.user(1001)
    update = {"update_id": 40, "message": tg.message(tg.private_chat(ann), ann, "Only once")}
    real = core.repo.deliveries.receive_one

    async def down(*_args: Any) -> bool:
        raise RuntimeError("database is down")

    async with running(TelegramAdapter(core.service, settings)), ClientSession() as client:
        monkeypatch.setattr(core.repo.deliveries, "receive_one", down)
        async with client.post(url, json=update) as answer:
            assert answer.status == 500  # not stored: Telegram sends it again
        monkeypatch.setattr(core.repo.deliveries, "receive_one", real)
        for _ in range(3):  # sent again, and again after it was stored
            async with client.post(url, json=update) as answer:
                assert answer.status == 200
        await tg.reply(1001)
        await asyncio.sleep(0.3)
    assert len(rated(tg, 1001)) == 1
    assert await stored_texts(core, "telegram:1001") == ["Only once", "You said: Only once"]


async def test_a_reply_cut_off_by_a_crash_is_finished_in_its_own_message(
    core: Core, tg: FakeTelegram
) -> None:
    core.service.generator = ScriptedGenerator(delay_s=0.5)
    cut_short = bot_settings(tg, shutdown_grace_s=0.0)
    ann = tg.user(1001)
    async with running(TelegramAdapter(core.service, cut_short)):
        tg.push_text(tg.private_chat(ann), ann, "Tell me a long story")
        await tg.wait_for(lambda c: c.method == "sendMessage" and c.ok)
    (pending,) = await core.repo.deliveries.unfinished(PLATFORM)
    first = tg.bot_messages(1001)
    assert len(first) == 1 and pending.reply_ref == str(first[0]["message_id"])
    core.service.generator = ScriptedGenerator()
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        await tg.wait_until(lambda: bool(rated(tg, 1001)))
    # The draft on screen became the answer: one message, with 👍/👎, no second reply.
    assert [m["text"] for m in tg.bot_messages(1001)] == ["You said: Tell me a long story"]
    assert await core.repo.deliveries.unfinished(PLATFORM) == []


async def test_a_reply_written_before_the_crash_is_shown_again_not_rewritten(
    core: Core, tg: FakeTelegram
) -> None:
    ann = tg.user(1001)
    message = tg.message(tg.private_chat(ann), ann, "Written already")
    incoming = Incoming("telegram", "1001", "1001", "Ann", "Written already")
    incoming = dataclasses.replace(incoming, message_id=str(message["message_id"]))
    async for _ in core.service.respond(incoming):
        pass  # answered and stored, and then the crash came before it was shown
    await core.repo.deliveries.receive(PLATFORM, [("9", {"update_id": 9, "message": message})])
    core.service.generator = ScriptedGenerator(lambda *_: "A different reply")
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        final = await tg.reply(1001)
    assert final.text == "You said: Written already"  # the stored reply, not a new one
    assert await stored_texts(core, "telegram:1001") == [
        "Written already",
        "You said: Written already",
    ]


async def test_a_button_press_is_handled_at_most_once(core: Core, tg: FakeTelegram) -> None:
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        ann = tg.user(1001)
        tg.push_text(tg.private_chat(ann), ann, "Rate me")
        final = await tg.reply(1001)
        start = len(tg.calls)
        tg.push_callback(ann, tg.bot_messages(1001)[-1])
        await tg.wait_for(lambda c: c.method == "answerCallbackQuery", start=start)
    assert final.exchange_id is not None
    # A press toggles a vote: it is marked done before it is handled, never handled again.
    assert await core.repo.deliveries.unfinished(PLATFORM) == []
    assert await core.repo.user_vote(final.exchange_id, "telegram:1001") is not None


async def test_the_store_drops_an_update_or_a_message_delivered_twice(core: Core) -> None:
    deliveries = core.repo.deliveries
    assert await deliveries.receive("p", [("1", {"a": 1}), ("2", {"a": 2})]) == ["1", "2"]
    assert await deliveries.receive("p", [("2", {"a": 2}), ("3", {"a": 3})]) == ["3"]
    assert await deliveries.receive_one("p", "3", {"a": 3}) is False
    assert await deliveries.receive("other bot", [("1", {"a": 1})]) == ["1"]
    await deliveries.finish("p", "1")
    assert [p.key for p in await deliveries.unfinished("p")] == ["2", "3"]
    add = core.repo.add_user_message
    first = await add("telegram:1", "telegram:1", "Ann", "hi", "5", source_key="telegram:1/5")
    again = await add("telegram:1", "telegram:1", "Ann", "hi", "5", source_key="telegram:1/5")
    assert first == again and await stored_texts(core, "telegram:1") == ["hi"]


async def test_a_chats_messages_are_answered_in_order_one_at_a_time(
    core: Core, tg: FakeTelegram
) -> None:
    core.service.generator = ScriptedGenerator(delay_s=0.05)
    ann, bob = tg.user(1001), tg.user(1002)
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        for text in ("first", "second", "third"):
            tg.push_text(tg.private_chat(ann), ann, text)
        tg.push_text(tg.private_chat(bob), bob, "meanwhile")
        await tg.wait_until(lambda: len(rated(tg, 1001)) == 3 and len(rated(tg, 1002)) == 1)
    texts = [m["text"] for m in rated(tg, 1001)]
    assert texts == ["You said: first", "You said: second", "You said: third"]
    # One at a time: each reply is finished (rated) before the next one is sent.
    calls = [c for c in tg.calls if c.chat_id == 1001 and c.ok and c.method != "sendChatAction"]
    starts = [i for i, c in enumerate(calls) if c.method == "sendMessage"]
    finals = [i for i, c in enumerate(calls) if c.rated]
    assert starts[1] > finals[0] and starts[2] > finals[1]
    # Another chat is not held up behind ann's: bob's reply came before ann's last.
    assert tg.finals(1002)[0].exchange_id < tg.finals(1001)[-1].exchange_id


async def test_updates_a_dead_process_left_are_handled_by_the_sweep(
    core: Core, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared log (PostgreSQL's case): a chat's stored update whose process died is taken up
    by a live process's sweep, without a restart."""
    from adapters.telegram import inbox

    monkeypatch.setattr(inbox, "SWEEP_S", 0.05)
    monkeypatch.setattr(inbox, "LEFT_BEHIND", timedelta(0))
    monkeypatch.setattr(type(core.repo.deliveries), "shared", property(lambda _self: True))
    ann = tg.user(1001)
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        message = tg.message(tg.private_chat(ann), ann, "Left behind")
        # Stored by a process that died before handling it (no turn held).
        await core.repo.deliveries.receive(
            PLATFORM, [("90", {"update_id": 90, "message": message})], {"90": "1001"}
        )
        await tg.reply(1001)
    assert len(rated(tg, 1001)) == 1
    assert await core.repo.deliveries.pending_chats(PLATFORM) == []


async def test_an_update_stored_while_the_drain_takes_its_last_look_is_answered(
    core: Core, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite (no sweep): the chat's drain reads the waiting updates one last time after
    letting its turn go; an update stored while that read is in flight (the read's snapshot
    predates it) is kicked to the same chat. It must still be answered, not wait for a
    restart. The read is held until the second update is stored, to make the race certain."""
    deliveries = type(core.repo.deliveries)
    real = deliveries.pending_in_chat
    stored = asyncio.Event()
    empty: list[bool] = []  # the drain's empty reads: in its turn, then its last look
    held: list[bool] = []

    async def late_snapshot(self: Any, platform: str, chat: str) -> list[Any]:
        pending = await real(self, platform, chat)  # the snapshot, before the second update
        if not pending:
            empty.append(True)
            if len(empty) == 2:  # the last look, after the turn was let go
                held.append(True)
                await stored.wait()  # the second update is stored and kicked meanwhile
        return pending

    real_receive = deliveries.receive_one

    async def receive_one(self: Any, *args: Any) -> bool:
        fresh: bool = await real_receive(self, *args)
        if held:
            stored.set()  # wakes the held read only after this update's kick
        return fresh

    monkeypatch.setattr(deliveries, "pending_in_chat", late_snapshot)
    monkeypatch.setattr(deliveries, "receive_one", receive_one)
    ann = tg.user(1001)
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        tg.push_text(tg.private_chat(ann), ann, "first")
        await tg.wait_until(lambda: len(rated(tg, 1001)) == 1 and bool(held))
        tg.push_text(tg.private_chat(ann), ann, "second")
        await tg.wait_until(lambda: len(rated(tg, 1001)) == 2)
    assert [m["text"] for m in rated(tg, 1001)] == ["You said: first", "You said: second"]
