"""The bot on Telegram (python-telegram-bot 22), in the event loop every adapter shares.

PTB's explicit lifecycle (``initialize``, ``start``, and the reverse when the task is
cancelled), never ``run_polling()``, which would own the loop. Updates are handled
concurrently, so many chats are answered at once.

Delivery is at least once (``adapters.telegram.inbox``): an update is stored before Telegram
is told it arrived (long polling or webhook, ``adapters.telegram.receiving``), and what a crash
interrupted is handled at the next start; a message is stored and answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from telegram import CallbackQuery, Chat, Message, Update, User
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import CallbackQueryHandler, MessageHandler, MessageReactionHandler, filters

from adapters.base import ChatCore, parse_again, parse_rating
from adapters.streaming import InFlight, Pacer
from adapters.telegram.app import (
    App,
    TelegramStartupError,
    build_application,
    initialize,
    register_commands,
    stop_receiving,
)
from adapters.telegram.bot_api import Target, TelegramIO, describe
from adapters.telegram.format import Piece, split_reply
from adapters.telegram.inbox import Inbox
from adapters.telegram.receiving import receive
from adapters.telegram.signals import TelegramSignals
from adapters.telegram.stream import telegram_stream
from adapters.telegram.updates import (
    PLATFORM,
    chat_key_of,
    keyboard_after,
    reply_target,
    sender_of,
    target_of_key,
    to_incoming,
)
from bot.settings import TelegramSettings
from bot.types import Incoming, RateAction, Reply, ReplyKind

__all__ = ["TelegramAdapter", "TelegramStartupError"]

log = logging.getLogger(__name__)

TYPING_REFRESH_S = 4.5  # Telegram shows "typing…" for 5 s per call
TEXT_ONLY = "I can only read text for now: please write your message."
EDITS_UNSEEN = "I only see new messages for now, not edits: please send it again."
FORGED = "That button is not one of mine; nothing changed."
SENT_PRIVATELY = "📬 I sent you the answer in a private chat."
NO_PRIVATE_CHAT = "\n\n(Start a private chat with me to get answers like this privately.)"


class TelegramAdapter:
    """Serves one bot token: answers messages, shows ratings, sends the core's notices."""

    platform = PLATFORM

    def __init__(self, service: ChatCore, settings: TelegramSettings) -> None:
        if settings.token is None:
            raise TelegramStartupError("telegram.token (or TELEGRAM_BOT_TOKEN) is not set")
        self._service = service
        self._settings = settings
        self._token = settings.token.get_secret_value()
        self._pacer = Pacer(settings.edit_interval_s)
        self._io: TelegramIO | None = None
        self._me: User | None = None
        self._inbox: Inbox | None = None
        self._inflight = InFlight(settings.shutdown_grace_s)
        self._signals = TelegramSignals(service, self._pacer)  # 🔄 and reactions
        self.ready = asyncio.Event()  # set while updates are being received

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled, then stop taking updates, let replies finish (up to
        ``shutdown_grace_s``) and close every connection."""
        app = self._build()
        async with contextlib.AsyncExitStack() as stack:
            await initialize(app, self._safe)
            stack.push_async_callback(app.shutdown)
            self._io, self._me = TelegramIO(app.bot), app.bot.bot
            stack.callback(self._forget_bot)
            await register_commands(app.bot, self._service.admins, self._safe)
            await app.start()
            stack.push_async_callback(app.stop)
            inbox = self._inbox = Inbox(app, self._service.deliveries)
            stack.push_async_callback(inbox.close)  # after the grace: the rest, next start
            stack.push_async_callback(self._inflight.drain)
            await inbox.recover()
            receiving = await receive(app.bot, inbox, self._settings, self._on_polling_error)
            stack.push_async_callback(stop_receiving, receiving)
            self.ready.set()
            stack.callback(self.ready.clear)
            log.info("serving Telegram as @%s (%s)", self._me.username, self._settings.mode)
            await asyncio.Future()  # until cancelled

    def _build(self) -> App:
        app = build_application(self._settings, self._token)
        app.add_handler(CallbackQueryHandler(self._on_press))
        app.add_handler(MessageReactionHandler(self._on_reaction))
        app.add_handler(MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT, self._on_text))
        other = filters.UpdateType.EDITED_MESSAGE | (
            filters.UpdateType.MESSAGE & ~filters.StatusUpdate.ALL
        )
        app.add_handler(MessageHandler(filters.ChatType.PRIVATE & other, self._on_other))
        app.add_error_handler(self._on_error)
        return app

    def _forget_bot(self) -> None:
        self._io = self._me = None
        self._inbox = None

    # -- updates --------------------------------------------------------------------------

    async def _on_text(self, update: Update, _context: Any) -> None:
        message, me = update.message, self._me
        if message is None or me is None:
            return
        incoming = to_incoming(message, me)
        if incoming is None or not self._service.should_answer(incoming, me.username):
            return
        with self._inflight.track():
            await self._answer(incoming, reply_target(message), update)

    async def _answer(self, incoming: Incoming, target: Target, update: Update) -> None:
        """Stream the core's reply into the chat; hand private output to the user's DM. The
        reply's first message is recorded, and after a restart the same update edits it."""
        io, username = self._require_io(), self._me.username if self._me else None
        inbox = self._inbox
        stream = telegram_stream(
            io,
            target,
            self._pacer,
            reuse=inbox.reply_ref(update) if inbox else None,
            on_first=functools.partial(inbox.reply_started, update) if inbox else None,
        )
        typing = asyncio.create_task(self._typing(target, stream.visible))
        try:
            reply = await stream.show(self._service.respond(incoming, bot_username=username))
            shown = stream.final_message
            if stream.held is not None:
                await self._deliver_privately(stream.held, incoming, target)
            elif reply.image_png is not None and shown is not None:
                await io.photo(target, reply.image_png)
            if reply.rateable and reply.exchange_id is not None and shown is not None:
                await self._service.reply_shown(reply.exchange_id, str(shown))
        finally:
            typing.cancel()

    async def _typing(self, target: Target, visible: asyncio.Event) -> None:
        """ "typing…" until the first message of the reply is on screen."""
        while not visible.is_set():
            await self._require_io().typing(target)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(visible.wait(), TYPING_REFRESH_S)

    async def _deliver_privately(self, reply: Reply, incoming: Incoming, group: Target) -> None:
        """Admin output asked for in a group goes to the asker's private chat. Telegram lets a
        bot write only to users who opened a chat with it; otherwise it goes to the group."""
        try:
            await self._send_reply(Target(int(incoming.user_id)), reply)
        except (Forbidden, BadRequest) as exc:
            log.info("no private chat with %s (%s)", incoming.user_key, self._safe(exc))
            await self._send_reply(group, Reply(reply.text + NO_PRIVATE_CHAT, reply.kind))
            return
        await self._send_reply(group, Reply(SENT_PRIVATELY, ReplyKind.NOTICE))

    async def _on_other(self, update: Update, _context: Any) -> None:
        """Photos, stickers, voice, edits in a private chat: say what works (groups: silence).
        A user refused and told so hears nothing here either."""
        message, me = update.effective_message, self._me
        sender = sender_of(message, me) if message is not None and me is not None else None
        if message is not None and (sender is None or self._service.should_answer(sender)):
            note = EDITS_UNSEEN if update.edited_message is not None else TEXT_ONLY
            await self._send_reply(reply_target(message), Reply(note, ReplyKind.NOTICE))

    async def _on_press(self, update: Update, _context: Any) -> None:
        """A 👍/👎 press: store it, say so in a toast, show the new counts on the buttons."""
        query = update.callback_query
        if query is None:
            return
        again, message = parse_again(query.data), query.message
        if again is not None and isinstance(message, Message) and _offered(query):
            with self._inflight.track():
                await self._signals.again(
                    self._require_io(),
                    message,
                    again,
                    query.from_user.id,
                    functools.partial(self._toast, query),
                )
            return
        parsed = parse_rating(query.data)
        if parsed is None or message is None or not _offered(query):
            await self._toast(query, FORGED)
            return
        exchange_id, vote = parsed
        outcome = await self._service.rate(
            exchange_id, f"{PLATFORM}:{query.from_user.id}", vote, chat_key=chat_key_of(message)
        )
        await self._toast(query, outcome.message)
        if outcome.action is not RateAction.REFUSED:
            markup = keyboard_after(outcome, private=message.chat.type == Chat.PRIVATE)
            async with self._pacer.turn(message.chat.id):
                await self._require_io().edit_markup(message.chat.id, message.message_id, markup)

    async def _on_reaction(self, update: Update, _context: Any) -> None:
        """Reactions on the bot's replies count as 👍/👎 (``chat.liked_reactions``, …)."""
        if update.message_reaction is not None:
            await self._signals.reaction(update.message_reaction)

    async def _toast(self, query: CallbackQuery, text: str) -> None:
        try:
            await self._require_io().patient(lambda: query.answer(text[:200]), "answerCallback")
        except BadRequest as exc:  # the press is over 15 s old: the user no longer waits
            log.info("could not answer a button press: %s", self._safe(exc))

    async def _on_error(self, _update: object, context: Any) -> None:
        error = context.error
        if isinstance(error, TelegramError):
            log.warning("handling a Telegram update failed: %s", self._safe(error))
        else:
            log.error("handling a Telegram update failed", exc_info=error)

    def _on_polling_error(self, exc: TelegramError) -> None:
        log.warning("fetching Telegram updates failed (retrying): %s", self._safe(exc))

    # -- sending --------------------------------------------------------------------------

    async def send(self, chat_key: str, text: str) -> None:
        """A message from the core (training progress) to ``telegram:<chat>[:<topic>]``."""
        await self._send_reply(target_of_key(chat_key), Reply(text, ReplyKind.NOTICE))

    async def _send_reply(self, target: Target, reply: Reply) -> None:
        """A whole reply at once, split into as many messages as it needs."""
        io = self._require_io()
        for piece in split_reply(reply.text) or [Piece("…")]:
            async with self._pacer.turn(target.chat_id):
                await io.send(target, piece)
        if reply.image_png is not None:
            await io.photo(target, reply.image_png)

    def _require_io(self) -> TelegramIO:
        if self._io is None:
            raise RuntimeError("the Telegram adapter is not connected")
        return self._io

    def _safe(self, exc: BaseException) -> str:
        """An error for the log, with the token masked wherever it might appear."""
        return describe(exc).replace(self._token, "***")


def _offered(query: CallbackQuery) -> bool:
    """Whether the pressed message really carries a button with this data: a client can send
    any data, and must not rate one reply through another reply's message."""
    message = query.message
    if message is None or not message.is_accessible or not isinstance(message, Message):
        return True  # an old message Telegram no longer shows us: the chat check in rate() holds
    markup = message.reply_markup
    return markup is not None and any(
        button.callback_data == query.data for row in markup.inline_keyboard for button in row
    )
