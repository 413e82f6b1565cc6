"""python-telegram-bot's Application as the adapter uses it: built from TelegramSettings,
initialised patiently, with the command menu set. Updates do not come through PTB's Updater
(which confirms them before they are stored) but ``adapters.telegram.receiving``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from telegram import Bot, BotCommand, BotCommandScopeChat, Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder

from bot.commands.table import COMMANDS
from bot.errors import StartupError
from bot.settings import TelegramSettings

log = logging.getLogger(__name__)

App = Application[Any, Any, Any, Any, Any, Any]
# Reactions on the bot's replies count as ratings; Telegram sends them only when asked.
ALLOWED_UPDATES = [
    Update.MESSAGE,
    Update.EDITED_MESSAGE,
    Update.CALLBACK_QUERY,
    Update.MESSAGE_REACTION,
]
STOP_RECEIVING_S = 5.0  # bound on stopping the updater (see stop_receiving)
Redact = Callable[[BaseException], str]  # an error as text for the log, token masked


class TelegramStartupError(StartupError):
    """Telegram cannot be served; the message says what to fix (and never holds the token)."""


class _HandledFloods(logging.Filter):
    """PTB's rate limiter logs every flood wait it passes on as an error with a traceback;
    TelegramIO waits them out, so they are not errors here (TelegramIO logs them at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Rate limit hit after maximum of 0 retries")


_HANDLED_FLOODS = _HandledFloods()


def build_application(settings: TelegramSettings, token: str) -> App:
    """The Application: concurrent updates, PTB's limiter for Telegram's global limits, and
    ``base_url`` passed through (a self-hosted Bot API server, or a test's fake)."""
    builder = (
        ApplicationBuilder()
        .token(token)
        .updater(None)  # updates come through adapters.telegram.receiving, stored first
        .concurrent_updates(settings.concurrent_updates)
        .rate_limiter(
            AIORateLimiter(
                overall_max_rate=settings.max_requests_per_second,
                group_max_rate=settings.max_requests_per_minute_per_group,
                max_retries=0,  # flood waits are handled per call (TelegramIO.patient)
            )
        )
    )
    logging.getLogger("telegram.ext.AIORateLimiter").addFilter(_HANDLED_FLOODS)
    if settings.base_url:
        builder = builder.base_url(settings.base_url)
    if settings.base_file_url:
        builder = builder.base_file_url(settings.base_file_url)
    app: App = builder.build()
    return app


async def initialize(app: App, redact: Redact) -> None:
    """``getMe``; a network failure is retried with backoff, a refused token is fatal."""
    try:
        await _get_me(app, redact)
    except BaseException:
        # Application.shutdown() skips an app that never finished initializing, but the bot's
        # HTTP clients are open by now: close them.
        await app.bot.shutdown()
        raise


async def _get_me(app: App, redact: Redact) -> None:
    delay = 1.0
    while True:
        try:
            await app.initialize()
            return
        except InvalidToken:
            # PTB's message quotes the token: never pass it on.
            raise TelegramStartupError(
                "Telegram refused the bot token: check telegram.token / TELEGRAM_BOT_TOKEN "
                "(a token from @BotFather)"
            ) from None
        except NetworkError as exc:
            log.warning("cannot reach Telegram (%s); again in %.0f s", redact(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)


class Receiving(Protocol):
    """Updates coming in (``adapters.telegram.receiving``): stopped at shutdown."""

    async def stop(self) -> None:
        """Take no more updates (and confirm the ones stored)."""
        ...


async def stop_receiving(receiving: Receiving) -> None:
    """Stop taking updates, bounded: while Telegram is unreachable the last confirming call
    could hang, and a shutdown should not wait for that."""
    try:
        await asyncio.wait_for(receiving.stop(), STOP_RECEIVING_S)
    except TimeoutError:
        log.warning("Telegram did not answer while stopping; recent updates may come again")


async def register_commands(bot: Bot, admins: Sequence[str], redact: Redact) -> None:
    """The command menu (setMyCommands): user commands for everyone, and all of them in the
    private chat of each admin configured as ``telegram:<user id>``."""
    users = [BotCommand(c.name, c.help) for c in COMMANDS if not c.admin]
    everything = [BotCommand(c.name, c.help) for c in COMMANDS]
    try:
        await bot.set_my_commands(users)
    except TelegramError as exc:
        log.warning("could not register the command menu: %s", redact(exc))
    for key in admins:
        platform, _, user_id = key.partition(":")
        if platform != "telegram" or not user_id.isdigit():
            continue
        try:
            await bot.set_my_commands(everything, scope=BotCommandScopeChat(int(user_id)))
        except TelegramError as exc:  # e.g. the admin has not opened a chat with the bot
            log.info("admin menu not set for %s: %s", key, redact(exc))
