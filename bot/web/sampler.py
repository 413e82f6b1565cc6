"""A small background task: the generator's tokens/s and the running training's loss points,
sampled every ``interval_s`` (progress events only hold the latest step)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from bot.learning.protocol import Event, Step
from bot.web.deps import GeneratorSnapshot

log = logging.getLogger(__name__)


class Sampler:
    """Keeps ``tokens_per_s`` and ``losses`` (run id → [(step, loss)]) current."""

    def __init__(
        self,
        generator: Callable[[], GeneratorSnapshot],
        progress: Callable[[], Event | None],
        running_run: Callable[[], Awaitable[int | None]],
        interval_s: float = 2.0,
    ) -> None:
        self._generator = generator
        self._progress = progress
        self._running_run = running_run
        self._interval = interval_s
        self._last: tuple[float, int] | None = None
        self._run: int | None = None
        self.tokens_per_s = 0.0
        self.losses: dict[int, list[tuple[int, float]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dashboard-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # a sample must never end the dashboard
                log.warning("dashboard sampler failed", exc_info=True)
            await asyncio.sleep(self._interval)

    async def sample(self) -> None:
        """One sample of the token counter and of the training progress."""
        now, tokens = time.monotonic(), self._generator().tokens
        if self._last is not None and now > self._last[0]:
            self.tokens_per_s = max(0, tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, tokens)
        await self._loss(self._progress())

    async def _loss(self, event: Event | None) -> None:
        if not isinstance(event, Step):
            return
        step, loss = event.step, event.loss
        points = self.losses.get(self._run) if self._run is not None else None
        if points is None or (points and step < points[-1][0]):  # a new run began
            self._run = await self._running_run()
            if self._run is None:
                return
            points = self.losses.setdefault(self._run, [])
        if not points or step > points[-1][0]:
            points.append((step, float(loss)))
