"""Per-user message limit: a sliding window of timestamps per key."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """At most ``limit`` events per ``window_s`` per key; ``limit == 0`` disables it."""

    def __init__(
        self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def check(self, key: str) -> float:
        """Record an event; returns 0 if allowed, else the seconds until the next one is."""
        if self._limit <= 0:
            return 0.0
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= self._window:
            events.popleft()
        if len(events) >= self._limit:
            return self._window - (now - events[0])
        events.append(now)
        return 0.0
