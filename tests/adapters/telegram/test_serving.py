"""Serving Telegram: many users at once, webhook mode, a clean stop, a refused token."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiohttp import ClientSession

from adapters.telegram import app as telegram_app
from adapters.telegram.adapter import TelegramAdapter, TelegramStartupError
from bot.app import Core
from bot.generation import ScriptedGenerator
from tests.fakes.common import running
from tests.fakes.telegram_server import FakeTelegram, bot_settings
from tests.support.net import free_port


@pytest.fixture
def scripted() -> ScriptedGenerator:
    return ScriptedGenerator(delay_s=0.01)  # every reply streams over a few drafts


async def test_fifty_users_at_once_are_all_answered_and_stored(
    core: Core, tg: FakeTelegram
) -> None:
    users = [tg.user(2000 + n, f"User{n}") for n in range(50)]
    chats = [tg.private_chat(user) for user in users]
    options = {"edit_interval_s": 0.2, "max_requests_per_second": 300}
    async with running(TelegramAdapter(core.service, bot_settings(tg, **options))):
        began = time.monotonic()
        for n, (chat, user) in enumerate(zip(chats, users, strict=True)):
            tg.push_text(chat, user, f"Hello from user {n}")
        await tg.wait_until(lambda: len(tg.finals()) == 50, within=30)
        took = time.monotonic() - began
    assert sorted(call.chat_id or 0 for call in tg.finals()) == [u["id"] for u in users]
    for n, user in enumerate(users):
        history = await core.repo.history(f"telegram:{user['id']}", 10)
        assert [m.content for m in history] == [
            f"Hello from user {n}",
            f"You said: Hello from user {n}",
        ]
    counts = await core.repo.stats.counts()
    assert (counts.users, counts.chats, counts.exchanges) == (50, 50, 50)
    assert took < 20


async def test_webhook_mode_receives_updates_posted_with_the_secret(
    core: Core, tg: FakeTelegram
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram-hook"
    options = {
        "mode": "webhook",
        "webhook_url": url,
        "listen": "127.0.0.1",
        "port": port,
        "secret_token": "s3cret-token",
    }
    async with running(TelegramAdapter(core.service, bot_settings(tg, **options))):
        assert tg.webhook is not None
        assert (tg.webhook["url"], tg.webhook["secret_token"]) == (url, "s3cret-token")
        ann = tg.user(1001)
        tg.push_text(tg.private_chat(ann), ann, "Hello over the webhook")
        final = await tg.reply(1001)
        assert final.text == "You said: Hello over the webhook"
        async with ClientSession() as client:
            forged = {"update_id": 99, "message": tg.message(tg.private_chat(ann), ann, "hi")}
            async with client.post(url, json=forged, headers={}) as answer:
                assert answer.status == 403  # no secret: not from Telegram
    assert tg.webhook_statuses == [200]
    assert not tg.calls_to("getUpdates")


async def test_cancelling_run_stops_cleanly_and_confirms_updates(
    core: Core, tg: FakeTelegram
) -> None:
    adapter = TelegramAdapter(core.service, bot_settings(tg))
    async with running(adapter) as task:
        ann = tg.user(1001)
        tg.push_text(tg.private_chat(ann), ann, "Hello")
        await tg.reply(1001)
    assert task.done() and task.cancelled()
    assert not adapter.ready.is_set()
    last = tg.calls_to("getUpdates")[-1]
    assert last.params["timeout"] == 0 and last.params["offset"] == 2  # the update is confirmed
    with pytest.raises(RuntimeError, match="not connected"):
        await adapter.send("telegram:1001", "anyone there?")


async def test_stopping_does_not_wait_for_an_unreachable_telegram(
    core: Core, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telegram_app, "STOP_RECEIVING_S", 0.3)
    async with running(TelegramAdapter(core.service, bot_settings(tg))):
        await tg.stop()  # Telegram goes away: polling fails, then backs off 1 s, 1.5 s, ...
        await asyncio.sleep(1.2)
        began = time.monotonic()
    assert time.monotonic() - began < 1.0


async def test_shutdown_cuts_off_a_reply_that_takes_too_long(core: Core, tg: FakeTelegram) -> None:
    slow = ScriptedGenerator(delay_s=1.0)
    core.service.generator = slow
    adapter = TelegramAdapter(core.service, bot_settings(tg, shutdown_grace_s=0.2))
    began = time.monotonic()
    async with running(adapter):
        ann = tg.user(1001)
        tg.push_text(tg.private_chat(ann), ann, "Tell me a long story")
        await tg.wait_for(lambda c: c.method == "sendMessage")
    assert time.monotonic() - began < 5
    history = await core.repo.history("telegram:1001", 10)
    assert [m.content for m in history] == ["Tell me a long story"]  # kept, though cut off


async def test_a_refused_token_stops_with_a_clear_error_that_hides_it(
    core: Core, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    settings = bot_settings(tg, token="999999:WRONG-token-abcdefghijklmnop")
    with pytest.raises(TelegramStartupError, match="refused the bot token") as raised:
        await TelegramAdapter(core.service, settings).run()
    assert "WRONG" not in str(raised.value)
    assert "WRONG" not in caplog.text.replace("httpx", "")  # httpx logs URLs: silenced in prod


async def test_unreachable_telegram_is_retried_until_stopped(
    core: Core, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    settings = bot_settings(tg, base_url=f"http://127.0.0.1:{free_port()}/bot")
    caplog.set_level(logging.WARNING, "adapters.telegram.adapter")
    task = asyncio.create_task(TelegramAdapter(core.service, settings).run())
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "cannot reach Telegram" in caplog.text
    assert tg.token not in caplog.text
