"""Messages the core sends on its own (training progress): routed to the adapter of the chat."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Sender = Callable[[str, str], Awaitable[None]]  # (chat_key, text)


class Outbox:
    """Adapters register a sender for their platform; the core sends by chat key."""

    def __init__(self) -> None:
        self._senders: dict[str, Sender] = {}

    def register(self, platform: str, sender: Sender) -> None:
        self._senders[platform] = sender

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

    def notifier(self, chat_key: str) -> Callable[[str], Awaitable[None]]:
        async def notify(text: str) -> None:
            await self.send(chat_key, text)

        return notify
