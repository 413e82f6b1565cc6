"""What an adapter needs to deliver at least once: a log of the platform's updates, stored
before the platform is told they arrived (``storage.deliveries.Deliveries`` implements it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Pending = tuple[str, dict[str, Any], str | None]
"""An update not handled yet: its key, the raw update, the id of its reply's first message."""


class DeliveryLog(Protocol):
    """Updates per bot account (``platform``, e.g. ``telegram:<bot id>``) and key."""

    async def receive(
        self, platform: str, updates: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[str]:
        """Store updates; the keys that were new (one stored before is dropped)."""
        ...

    async def receive_one(self, platform: str, key: str, payload: dict[str, Any]) -> bool:
        """Store one update; False if it was stored before."""
        ...

    async def unfinished(self, platform: str) -> Sequence[Pending]:
        """The updates received and not handled (a crash interrupted them), oldest first."""
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
