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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from telegram import Update

from adapters.delivery import DeliveryLog
from adapters.telegram.app import App

log = logging.getLogger(__name__)


class Inbox:
    """The stored updates of one bot account, and the tasks handling them."""

    def __init__(self, app: App, deliveries: DeliveryLog) -> None:
        self._app = app
        self._log = deliveries
        self.platform = f"telegram:{app.bot.id}"  # update ids are numbered per bot
        self._refs: dict[int, int] = {}  # update id → its reply's first message, when known
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> int:
        """Handle again what a crash interrupted (before new updates); returns how many."""
        await self._log.prune()
        pending = await self._log.unfinished(self.platform)
        for _key, payload, ref in pending:
            update = Update.de_json(payload, self._app.bot)
            if ref is not None:
                self._refs[update.update_id] = int(ref)
            self._dispatch(update)
        if pending:
            log.info("handling %d Telegram updates interrupted by a restart", len(pending))
        return len(pending)

    async def accept(self, updates: Sequence[Update]) -> None:
        """Store ``updates``, then handle the new ones. If storing fails this raises, and the
        caller must not confirm them: Telegram sends them again."""
        items = [(str(u.update_id), u.to_dict()) for u in updates]
        if len(items) == 1:
            fresh = (
                {items[0][0]} if await self._log.receive_one(self.platform, *items[0]) else set()
            )
        else:
            fresh = set(await self._log.receive(self.platform, items))
        for update in updates:
            if str(update.update_id) in fresh:
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
        updates stay unfinished, and are handled at the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _dispatch(self, update: Update) -> None:
        task = asyncio.create_task(self._handle(update), name=f"telegram-update-{update.update_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
