"""What an adapter needs to deliver at least once: a log of the platform's updates, stored
before the platform is told they arrived (``storage.deliveries.Deliveries`` implements it)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

Pending = tuple[str, dict[str, Any], str | None]
"""An update not handled yet: its key, the raw update, the id of its reply's first message."""


class DeliveryLog(Protocol):
    """Updates per bot account (``platform``, e.g. ``telegram:<bot id>``) and key."""

    @property
    def shared(self) -> bool:
        """Whether other serving processes take updates from this log too."""
        ...

    async def receive(
        self,
        platform: str,
        updates: Sequence[tuple[str, dict[str, Any]]],
        chats: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Store updates (``chats``: the chat key of those in a chat); the keys that were new
        (one stored before, by this process or another, is dropped)."""
        ...

    async def receive_one(
        self, platform: str, key: str, payload: dict[str, Any], chat_key: str | None = None
    ) -> bool:
        """Store one update; False if it was stored before."""
        ...

    async def unfinished(self, platform: str, *, chatless: bool = False) -> Sequence[Pending]:
        """The updates received and not handled (a crash interrupted them), oldest first
        (``chatless``: only those in no chat)."""
        ...

    def chat_turn(
        self, platform: str, chat_key: str
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to take the chat's turn (one process, one update at a time); yields whether
        it was taken."""
        ...

    async def pending_chats(self, platform: str, older_than: timedelta | None = None) -> list[str]:
        """The chats with updates not handled yet (received before ``older_than`` ago)."""
        ...

    async def pending_in_chat(self, platform: str, chat_key: str) -> Sequence[Pending]:
        """A chat's updates not handled yet, in the platform's order."""
        ...

    async def reply_started(self, platform: str, key: str, reply_ref: str) -> None:
        """Record the first message of the update's reply."""
        ...

    async def finish(self, platform: str, key: str) -> None:
        """The update is handled."""
        ...

    async def prune(self) -> int:
        """Forget updates handled long ago."""
        ...
