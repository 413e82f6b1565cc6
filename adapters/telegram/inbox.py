"""At-least-once delivery on Telegram: every update is stored before Telegram is told it
arrived, handled from there, and marked done once handled.

PTB's own Updater confirms an update (the next ``getUpdates`` offset, or the webhook's 200) as
soon as it is queued in memory, so a crash loses whatever was being handled. Here the receivers
(``adapters.telegram.receiving``) hand each batch to :meth:`Inbox.accept`, which stores it first;
only then is it confirmed. The updates a crash interrupted are handled again at the next start
(:meth:`Inbox.recover`). A message handled twice is stored once (the core keys it by chat and
message id) and answered once: a reply already written is shown again from the database, and
the reply's first message is recorded when sent, so a second answer edits that message instead
of posting another.

Button presses are the exception: a press toggles a vote, so one handled twice would undo it.
They are marked done before they are handled (at most once: a press lost in a crash is pressed
again). A command a crash interrupted runs again at the next start.

What can still be shown twice: a reply whose first message was sent in the instant before the
crash and not yet recorded (a draft, usually: the answer then edits a new message), and the
later messages of a reply longer than one Telegram message.

Order: the updates of one chat are handled one at a time, in update order, by whichever process
holds the chat's turn (``DeliveryLog.chat_turn``: in memory on SQLite, a PostgreSQL advisory
lock when several serving processes share the database). A process that stores an update of a
chat whose turn another holds leaves it to that one, which looks again before it lets go. When
processes share the log, each also sweeps now and then for chats whose updates wait with no
one holding their turn (their process died), so nothing a crash interrupted waits for a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any

from telegram import Update

from adapters.delivery import DeliveryLog, Pending
from adapters.telegram.app import App

log = logging.getLogger(__name__)

SWEEP_S = 1.0  # how often a process sharing the log looks for chats left behind
LEFT_BEHIND = timedelta(seconds=2)  # waiting this long with no turn held: someone died


def chat_of(update: Update) -> str | None:
    """The key that orders an update: its chat's id; None for a button press (handled at
    once: a press is not a message to answer in turn)."""
    if update.callback_query is not None or update.effective_chat is None:
        return None
    return str(update.effective_chat.id)


class Inbox:
    """The stored updates of one bot account, and the tasks handling them."""

    def __init__(self, app: App, deliveries: DeliveryLog) -> None:
        self._app = app
        self._log = deliveries
        self.platform = f"telegram:{app.bot.id}"  # update ids are numbered per bot
        self._refs: dict[int, int] = {}  # update id → its reply's first message, when known
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining: set[str] = set()  # chats whose turn a task of this process handles
        self._kicked: set[str] = set()  # chats kicked while drained: drain once more after
        self._closing = False

    async def recover(self) -> int:
        """Handle again what a crash interrupted (before new updates); returns how many."""
        await self._log.prune()
        pending = await self._log.unfinished(self.platform, chatless=True)
        for _key, payload, _ref in pending:
            self._dispatch(Update.de_json(payload, self._app.bot))
        chats = await self._log.pending_chats(self.platform)
        for chat in chats:
            self._kick(chat)
        if pending or chats:
            log.info(
                "handling Telegram updates interrupted by a restart: %d chats, %d others",
                len(chats),
                len(pending),
            )
        if self._log.shared:
            self._spawn(self._sweep(), "telegram-sweep")
        return len(pending) + len(chats)

    async def accept(self, updates: Sequence[Update]) -> None:
        """Store ``updates``, then handle the new ones. If storing fails this raises, and the
        caller must not confirm them: Telegram sends them again."""
        items = [(str(u.update_id), u.to_dict()) for u in updates]
        chats = {str(u.update_id): c for u in updates if (c := chat_of(u)) is not None}
        if len(items) == 1:
            key = items[0][0]
            stored = await self._log.receive_one(self.platform, *items[0], chats.get(key))
            fresh = {key} if stored else set()
        else:
            fresh = set(await self._log.receive(self.platform, items, chats))
        for update in updates:
            key = str(update.update_id)
            if key not in fresh:
                continue
            if key in chats:
                self._kick(chats[key])
            else:
                self._dispatch(update)

    def reply_ref(self, update: Update) -> int | None:
        """The message that shows the update's reply, if one was sent before a restart."""
        return self._refs.get(update.update_id)

    async def reply_started(self, update: Update, message_id: int) -> None:
        """Record the first message of the update's reply (a second answer edits it)."""
        self._refs[update.update_id] = message_id
        try:
            await self._log.reply_started(self.platform, str(update.update_id), str(message_id))
        except Exception:  # only a second answer's edit-in-place depends on it: go on
            log.exception("could not record the reply message of update %s", update.update_id)

    async def close(self) -> None:
        """Stop what is still being handled (done after the adapter's shutdown grace): those
        updates stay unfinished, and are handled at the next start (or by another process)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, update: Update) -> None:
        self._spawn(self._handle(update), f"telegram-update-{update.update_id}")

    def _kick(self, chat: str) -> None:
        """See that the chat's waiting updates are handled: by a task of this process unless
        one already drains it (it looks again before it ends)."""
        if self._closing:
            return  # left unfinished: handled at the next start (or by another process)
        if chat in self._draining:
            # Its drain may be reading the waiting updates right now, in a snapshot taken
            # before this one was stored: it drains once more when it ends, so nothing waits
            # for a sweep (none runs on SQLite) or a restart.
            self._kicked.add(chat)
            return
        self._draining.add(chat)
        self._spawn(self._drain(chat), f"telegram-chat-{chat}")

    async def _drain(self, chat: str) -> None:
        """Handle the chat's waiting updates in order while holding its turn. After letting
        the turn go, look once more: an update stored meanwhile by a process that found the
        turn taken is this one's to handle."""
        tried: set[str] = set()  # a failed update waits for a restart, not a loop
        try:
            while True:
                async with self._log.chat_turn(self.platform, chat) as mine:
                    if not mine:
                        return  # its holder handles the rest
                    while todo := await self._waiting(chat, tried):
                        for key, payload, ref in todo:
                            tried.add(key)
                            await self._handle(self._restore(payload, ref))
                if not await self._waiting(chat, tried):
                    return
        except Exception:
            log.exception(
                "handling the updates of Telegram chat %s failed; tried again later", chat
            )
        finally:
            self._draining.discard(chat)
            if chat in self._kicked:
                self._kicked.discard(chat)
                self._kick(chat)

    async def _waiting(self, chat: str, tried: set[str]) -> list[Pending]:
        pending = await self._log.pending_in_chat(self.platform, chat)
        return [p for p in pending if p[0] not in tried]

    def _restore(self, payload: dict[str, Any], ref: str | None) -> Update:
        update = Update.de_json(payload, self._app.bot)
        if ref is not None:
            self._refs[update.update_id] = int(ref)
        return update

    async def _sweep(self) -> None:
        """Now and then, take up chats whose updates wait with no process holding their turn
        (the one that stored them died): the turn is free, so the first to try gets it."""
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                for chat in await self._log.pending_chats(self.platform, LEFT_BEHIND):
                    self._kick(chat)
            except Exception:  # the database is away for now: the next sweep tries again
                log.warning("could not look for waiting Telegram updates", exc_info=True)

    async def _handle(self, update: Update) -> None:
        key = str(update.update_id)
        try:
            if update.callback_query is not None:
                await self._log.finish(self.platform, key)  # at most once (see the module)
            # PTB's processor bounds how many updates run at once (concurrent_updates);
            # process_update hands a handler's error to the adapter's error handler.
            processor = self._app.update_processor
            await processor.process_update(update, self._app.process_update(update))
            await self._log.finish(self.platform, key)
        except Exception:
            log.exception("handling Telegram update %s failed; it is tried again at restart", key)
        finally:
            self._refs.pop(update.update_id, None)
