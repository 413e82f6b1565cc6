"""Messages the core sends on its own (training progress): routed to the adapter of the chat."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

Sender = Callable[[str, str], Awaitable[None]]  # (chat_key, text)
PrivateSender = Callable[[str, str], Awaitable[None]]  # (user_key, text)
Notify = Callable[[str], Awaitable[None]]


class Outbox:
    """Adapters register a sender for their platform; the core sends by chat key.

    How the core reaches a user privately is the platforms' to say (``bot.settings.PLATFORMS``):
    ``private_chats`` names those whose private chat with a user has the user key as its chat
    key (Telegram), and ``register_private`` gives the others' way (a Discord DM).
    """

    def __init__(self, private_chats: Iterable[str] = ()) -> None:
        self._senders: dict[str, Sender] = {}
        self._private: dict[str, PrivateSender] = {}
        self._private_chats = frozenset(private_chats)

    def register(self, platform: str, sender: Sender) -> None:
        """How to send to a chat on ``platform``, by chat key."""
        self._senders[platform] = sender

    def register_private(self, platform: str, sender: PrivateSender) -> None:
        """How to write to a user privately on ``platform`` (e.g. a Discord DM), by user key."""
        self._private[platform] = sender

    def reaches(self, chat_key: str) -> bool:
        """Whether this process has an adapter that sends to ``chat_key``'s platform."""
        return chat_key.partition(":")[0] in self._senders

    async def send(self, chat_key: str, text: str) -> None:
        platform = chat_key.partition(":")[0]
        sender = self._senders.get(platform)
        if sender is None:
            log.info("no adapter for %s; message not delivered: %s", chat_key, text)
            return
        try:
            await sender(chat_key, text)
        except Exception:
            # A failed notice must never break what sent it (a training run, say).
            log.exception("could not deliver a message to %s", chat_key)

    def notifier(self, chat_key: str) -> Notify:
        """Messages to the chat ``chat_key``, as one callable."""

        async def notify(text: str) -> None:
            await self.send(chat_key, text)

        return notify

    def private_notifier(self, user_key: str) -> Notify | None:
        """Messages to ``user_key``'s private chat, or None where the core cannot address it."""
        platform = user_key.partition(":")[0]
        sender = self._private.get(platform)
        if sender is not None:

            async def notify(text: str) -> None:
                try:
                    await sender(user_key, text)
                except Exception:
                    log.exception("could not deliver a private message to %s", user_key)

            return notify
        if platform in self._private_chats:
            return self.notifier(user_key)
        return None
