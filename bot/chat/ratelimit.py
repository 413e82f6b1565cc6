"""Per-user message limit: at most ``limit`` messages per ``window_s`` per user.

The count is kept where the database's ``Coordination`` keeps it (``storage.coordination``): in
process memory on SQLite (one serving process), in the database on PostgreSQL, so a user
writing to several serving processes is still held to one limit.
"""

from __future__ import annotations

from storage.coordination import Coordination


class RateLimiter:
    """At most ``limit`` events per ``window_s`` per key; ``limit == 0`` disables it."""

    def __init__(self, coordination: Coordination, limit: int, window_s: float = 60.0) -> None:
        self._coordination = coordination
        self._limit = limit
        self._window = window_s

    async def check(self, key: str) -> float:
        """Record an event; returns 0 if allowed, else the seconds until the next one is."""
        if self._limit <= 0:
            return 0.0
        return await self._coordination.rate_check(key, self._limit, self._window)
