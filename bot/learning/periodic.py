"""A background task that runs a check every few seconds until stopped (the training
schedule and the version watcher): a failing check is logged and tried again next time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class Periodic:
    """``tick()`` every ``interval_s()`` seconds, as the task ``name``, from :meth:`start` to
    :meth:`stop`. The interval is read before each wait, so a changed setting applies."""

    def __init__(
        self, name: str, interval_s: Callable[[], float], tick: Callable[[], Awaitable[Any]]
    ) -> None:
        self._name = name
        self._interval_s = interval_s
        self._tick = tick
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start unless already running."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s())
            try:
                await self._tick()
            except Exception:  # a database hiccup must not end the loop for good
                log.exception("%s: the check failed; tried again next time", self._name)
