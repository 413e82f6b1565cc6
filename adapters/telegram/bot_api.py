"""Bot API calls that never lose text: flood waits are waited out, a formatting Telegram
refuses falls back to plain text, and "message is not modified" is not an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from telegram import (
    Bot,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError

from adapters.telegram.format import Piece

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_FLOOD_WAITS = 20  # a reply is worth waiting for; this only ends a pathological loop
MAX_NETWORK_RETRIES = 3
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)  # model links are not worth a big card


@dataclass(frozen=True)
class Target:
    """Where a reply goes: a chat, maybe a forum topic, maybe as a reply to a message."""

    chat_id: int
    thread_id: int | None = None
    reply_to: int | None = None

    @property
    def private(self) -> bool:
        # Private chats have the user's (positive) id; groups and channels are negative.
        return self.chat_id > 0


def retry_seconds(exc: RetryAfter) -> float:
    """Seconds Telegram asks us to wait. The public ``retry_after`` warns (its type changes in
    PTB 23); the timedelta underneath is what PTB's own rate limiter reads."""
    return exc._retry_after.total_seconds()


def describe(exc: BaseException) -> str:
    """``Kind: message`` for logs. TelegramError messages carry no token, except InvalidToken's,
    which the adapter never logs."""
    return f"{type(exc).__name__}: {exc}"


def _is_not_modified(exc: BadRequest) -> bool:
    return "message is not modified" in exc.message.lower()


def _is_format_error(exc: BadRequest) -> bool:
    text = exc.message.lower()
    # An HTML piece whose visible text is empty (a lone "```") is refused as "text is empty".
    return "can't parse entities" in text or "text is empty" in text or "must be non-empty" in text


class TelegramIO:
    """The few calls the adapter makes, each patient with flood control."""

    def __init__(self, bot: Bot, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.bot = bot
        self._sleep = sleep

    async def patient(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``call``; on RetryAfter wait as told and run it again (the same call, the same
        text); on a network error try again a few times. Other errors are the caller's."""
        floods = network = 0
        while True:
            try:
                return await call()
            except RetryAfter as exc:
                floods += 1
                if floods > MAX_FLOOD_WAITS:
                    raise
                wait = retry_seconds(exc) + 0.05
                log.info("flood control on %s: waiting %.1f s, then sending it again", what, wait)
                await self._sleep(wait)
            except BadRequest:
                raise  # a subclass of NetworkError, but trying again cannot help
            except NetworkError as exc:
                network += 1
                if network > MAX_NETWORK_RETRIES:
                    raise
                log.warning("%s failed (%s); trying again", what, describe(exc))
                await self._sleep(0.5 * network)

    async def _formatted(
        self, piece: Piece, suffix: str, call: Callable[[str, str | None], Awaitable[T]], what: str
    ) -> T:
        """Send ``piece`` as HTML; if Telegram cannot parse it, as the plain text."""
        formatted = piece.html(suffix)
        try:
            return await self.patient(lambda: call(formatted, ParseMode.HTML), what)
        except BadRequest as exc:
            if not _is_format_error(exc):
                raise
            log.info("Telegram refused the formatting (%s); sending plain text", exc.message)
        return await self.patient(lambda: call(piece.text + suffix, None), what)

    async def send(
        self,
        target: Target,
        piece: Piece,
        *,
        suffix: str = "",
        markup: InlineKeyboardMarkup | None = None,
    ) -> Message:
        """Send one message (at most 4096 visible characters) to ``target``."""
        reply = (
            ReplyParameters(target.reply_to, allow_sending_without_reply=True)
            if target.reply_to is not None
            else None
        )

        async def call(text: str, mode: str | None) -> Message:
            return await self.bot.send_message(
                target.chat_id,
                text,
                parse_mode=mode,
                reply_markup=markup,
                message_thread_id=target.thread_id,
                reply_parameters=reply,
                link_preview_options=_NO_PREVIEW,
            )

        return await self._formatted(piece, suffix, call, "sendMessage")

    async def edit(
        self,
        chat_id: int,
        message_id: int,
        piece: Piece,
        *,
        suffix: str = "",
        markup: InlineKeyboardMarkup | None = None,
    ) -> None:
        """Replace a message's text (and keyboard: none unless given, as Telegram does)."""

        async def call(text: str, mode: str | None) -> None:
            try:
                await self.bot.edit_message_text(
                    text,
                    chat_id,
                    message_id,
                    parse_mode=mode,
                    reply_markup=markup,
                    link_preview_options=_NO_PREVIEW,
                )
            except BadRequest as exc:
                if not _is_not_modified(exc):
                    raise

        await self._formatted(piece, suffix, call, "editMessageText")

    async def edit_markup(
        self, chat_id: int, message_id: int, markup: InlineKeyboardMarkup | None
    ) -> None:
        async def call() -> None:
            try:
                await self.bot.edit_message_reply_markup(chat_id, message_id, reply_markup=markup)
            except BadRequest as exc:
                if not _is_not_modified(exc):
                    raise

        await self.patient(call, "editMessageReplyMarkup")

    async def delete(self, chat_id: int, message_id: int) -> None:
        await self.patient(lambda: self.bot.delete_message(chat_id, message_id), "deleteMessage")

    async def photo(self, target: Target, png: bytes) -> None:
        await self.patient(
            lambda: self.bot.send_photo(
                target.chat_id, png, message_thread_id=target.thread_id, filename="stats.png"
            ),
            "sendPhoto",
        )

    async def typing(self, target: Target) -> None:
        """Show "typing…" (about 5 s, or until a message is sent). Best effort: no waiting."""
        try:
            await self.bot.send_chat_action(
                target.chat_id, ChatAction.TYPING, message_thread_id=target.thread_id
            )
        except TelegramError as exc:
            log.debug("typing indicator failed: %s", describe(exc))
