"""Signals besides 👍/👎 on Telegram: the 🔄 button (another reply, written over the old one in
the same message) and message reactions (``message_reaction`` updates) counted as votes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from telegram import Message, MessageReactionUpdated, ReactionType, ReactionTypeEmoji

from adapters.base import ChatCore
from adapters.streaming import Pacer, ReplyStream, unless_refused
from adapters.telegram.bot_api import Target, TelegramIO
from adapters.telegram.stream import TelegramSurface
from adapters.telegram.updates import PLATFORM, chat_key_of, thread_of

log = logging.getLogger(__name__)

WRITING = "🔄 Writing another reply…"

Toast = Callable[[str], Awaitable[None]]


class TelegramSignals:
    """🔄 presses and reactions, through the chat core."""

    def __init__(self, service: ChatCore, pacer: Pacer) -> None:
        self._service = service
        self._pacer = pacer

    async def again(
        self, io: TelegramIO, message: Message, exchange_id: int, user_id: int, toast: Toast
    ) -> None:
        """Another reply to the prompt of ``exchange_id``, streamed over ``message`` (the one
        whose 🔄 was pressed); a refusal is only toasted, the old reply stays."""
        items = self._service.regenerate(
            exchange_id,
            f"{PLATFORM}:{user_id}",
            chat_key=chat_key_of(message),
            platform=PLATFORM,
        )
        refused, items = await unless_refused(items)
        await toast(refused.text if refused is not None else WRITING)
        if refused is not None:
            return
        target = Target(message.chat.id, thread_of(message))
        stream = ReplyStream(TelegramSurface(io, target), self._pacer, reuse=[message.message_id])
        reply = await stream.show(items)
        shown = stream.final_message
        if reply.rateable and reply.exchange_id is not None and shown is not None:
            await self._service.reply_shown(reply.exchange_id, str(shown))

    async def reaction(self, update: MessageReactionUpdated) -> None:
        """A user's reactions on a message changed: a vote when the message is one of the
        bot's replies and a reaction that counts was added or removed. Anonymous reactions
        (a channel or an anonymous admin) have no user: ignored."""
        if update.user is None or update.user.is_bot:
            return
        new, old = _emoji(update.new_reaction), _emoji(update.old_reaction)
        # Telegram has no topic id here; message ids are unique per chat, so the chat's key
        # without the topic finds the reply in any of its topics.
        outcome = await self._service.react(
            f"{PLATFORM}:{update.chat.id}",
            str(update.message_id),
            f"{PLATFORM}:{update.user.id}",
            added=[e for e in new if e not in old],
            removed=[e for e in old if e not in new],
        )
        if outcome is not None:
            log.debug("reaction on %s: %s", update.message_id, outcome.action.value)


def _emoji(reactions: Sequence[ReactionType]) -> list[str]:
    """The plain emoji among reactions (custom and paid ones have no vote)."""
    return [r.emoji for r in reactions if isinstance(r, ReactionTypeEmoji)]
