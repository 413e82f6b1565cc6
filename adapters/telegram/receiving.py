"""Taking updates from Telegram, confirming each only once it is stored.

Long polling: a batch from ``getUpdates`` is stored (``Inbox.accept``) before the next call,
whose ``offset`` is what confirms it to Telegram; if storing fails, the offset stays and
Telegram sends the batch again. Webhook: Telegram's POST is answered 200 only after the update
is stored (an error status makes Telegram send it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from telegram import Bot, Update
from telegram.error import TelegramError

from adapters.telegram.app import ALLOWED_UPDATES, Receiving
from adapters.telegram.inbox import Inbox
from bot.settings import TelegramSettings

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 10  # seconds a long poll waits for updates (as PTB's start_polling)
MAX_BACKOFF_S = 30.0
BOOTSTRAP_TRIES = 3
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


async def receive(
    bot: Bot,
    inbox: Inbox,
    settings: TelegramSettings,
    on_error: Callable[[TelegramError], None],
) -> Receiving:
    """Start taking updates: long polling, or a webhook server when so configured."""
    receiving: Polling | Webhook
    if settings.mode == "webhook":
        receiving = Webhook(bot, inbox, settings)
    else:
        receiving = Polling(bot, inbox, on_error)
    await receiving.start()
    return receiving


async def _bootstrap(call: Callable[[], Awaitable[Any]], what: str) -> None:
    """A set-up call (deleteWebhook, setWebhook), tried a few times as PTB's Updater does."""
    for attempt in range(1, BOOTSTRAP_TRIES + 1):
        try:
            await call()
            return
        except TelegramError as exc:
            if attempt == BOOTSTRAP_TRIES:
                raise
            log.warning("%s failed (%s); trying again", what, type(exc).__name__)
            await asyncio.sleep(1.0)


class Polling:
    """The long-polling loop."""

    def __init__(self, bot: Bot, inbox: Inbox, on_error: Callable[[TelegramError], None]) -> None:
        self._bot = bot
        self._inbox = inbox
        self._on_error = on_error
        self._offset = 0  # the next update id wanted: everything below it is stored
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await _bootstrap(self._bot.delete_webhook, "deleteWebhook")  # polling needs no webhook
        self._task = asyncio.create_task(self._loop(), name="telegram-polling")

    async def _loop(self) -> None:
        delay = 0.0
        while True:
            try:
                await self._poll_once()
                delay = 0.0
                continue
            except TelegramError as exc:
                self._on_error(exc)
            except Exception:  # the database: keep the offset, Telegram sends them again
                log.exception("could not store Telegram updates; fetching them again")
            delay = min(MAX_BACKOFF_S, 1.5 * delay) if delay else 1.0
            await asyncio.sleep(delay)

    async def _poll_once(self) -> None:
        updates = await self._bot.get_updates(
            offset=self._offset, timeout=POLL_TIMEOUT_S, allowed_updates=ALLOWED_UPDATES
        )
        if updates:
            await self._inbox.accept(updates)
            self._offset = updates[-1].update_id + 1  # stored: the next call confirms them

    async def stop(self) -> None:
        """Stop polling, then confirm what was stored (as PTB does at shutdown), so Telegram
        does not send it again at the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self._offset:
            return
        try:
            await self._bot.get_updates(
                offset=self._offset, limit=1, timeout=0, allowed_updates=ALLOWED_UPDATES
            )
        except TelegramError as exc:
            log.info(
                "could not confirm the last updates (%s): they come again, and are "
                "dropped as already stored",
                type(exc).__name__,
            )


class Webhook:
    """A small HTTP server for Telegram's POSTs (behind the operator's TLS proxy or load
    balancer). Several processes may serve one webhook URL: each registers the same URL
    (setWebhook with the same values is idempotent, so the last one changes nothing), none
    deletes it on stop, and an update POSTed to two of them is stored, and handled, once."""

    def __init__(self, bot: Bot, inbox: Inbox, settings: TelegramSettings) -> None:
        assert settings.webhook_url is not None  # the settings validate this
        self._bot = bot
        self._inbox = inbox
        self._settings = settings
        self._url = settings.webhook_url
        secret = settings.secret_token
        self._secret = secret.get_secret_value() if secret else None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/" + urlsplit(self._url).path.lstrip("/"), self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._settings.listen, self._settings.port).start()
        await _bootstrap(
            lambda: self._bot.set_webhook(
                self._url, secret_token=self._secret, allowed_updates=ALLOWED_UPDATES
            ),
            "setWebhook",
        )

    async def _post(self, request: web.Request) -> web.Response:
        if self._secret is not None and not hmac.compare_digest(
            request.headers.get(SECRET_HEADER, ""), self._secret
        ):
            return web.Response(status=403)  # not from Telegram
        try:
            raw = await request.json()
            update = Update.de_json(raw, self._bot) if isinstance(raw, dict) else None
        except Exception:
            update = None
        if update is None:
            return web.Response(status=400)
        try:
            await self._inbox.accept([update])
        except Exception:
            log.exception("could not store a Telegram update; Telegram will send it again")
            return web.Response(status=500)
        return web.Response(status=200)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
