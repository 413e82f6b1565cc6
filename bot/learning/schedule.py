"""Training by schedule: every N hours and/or after M new ratings (both off by default).

An asyncio task in the serving process; it starts runs through the same Finetuner and the same
database lock as /finetune, so there are never two at once (a run started elsewhere, e.g.
``selftune train``, is simply waited out). Counting restarts at each run or attempt, so a run
that fails is not retried every minute, only after the next N hours or M ratings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.errors import NothingToTrain, TrainingAlreadyRunning
from bot.learning.finetune import Finetuner
from bot.learning.periodic import Periodic
from bot.learning.watcher import SCHEDULE
from bot.outbox import Outbox
from bot.settings import ScheduleSettings
from storage.repository import Repository

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Checks every ``check_interval_s`` whether a run is due, and starts it."""

    def __init__(
        self,
        settings: ScheduleSettings,
        repo: Repository,
        finetuner: Finetuner,
        outbox: Outbox,
        clock: Clock = _now,
    ) -> None:
        self._settings = settings
        self._repo = repo
        self._finetuner = finetuner
        self._outbox = outbox
        self._clock = clock
        self._since = clock()  # with no run yet, "every N hours" counts from the start
        self._attempted: datetime | None = None
        self._periodic = Periodic(
            "training-schedule", lambda: self._settings.check_interval_s, self.tick
        )

    @property
    def enabled(self) -> bool:
        return self._settings.every_hours > 0 or self._settings.after_ratings > 0

    def start(self) -> None:
        if self.enabled:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def due(self) -> str | None:
        """Why a run is due now, or None."""
        runs = await self._repo.runs.recent(limit=1)
        marks = [self._attempted, runs[0].started_at if runs else None]
        last = max((m for m in marks if m is not None), default=None)
        hours = self._settings.every_hours
        if hours > 0 and self._clock() - (last or self._since) >= timedelta(hours=hours):
            return f"every {hours:g} hours"
        wanted = self._settings.after_ratings
        if wanted > 0:
            new = await self._repo.training.ratings_since(last or datetime(1970, 1, 1, tzinfo=UTC))
            if new >= wanted:
                return f"{new} new ratings (after_ratings = {wanted})"
        return None

    async def tick(self) -> str | None:
        """One check: start a run if one is due. Returns what happened (None: nothing)."""
        if self._finetuner.running or await self._repo.runs.running() is not None:
            return None
        reason = await self.due()
        if reason is None:
            return None
        self._attempted = self._clock()
        try:
            text = await self._finetuner.start(
                trigger="schedule", requested_by=None, notify=self._notify, notify_to=SCHEDULE
            )
        except NothingToTrain as exc:
            log.info("scheduled training (%s) skipped: %s", reason, exc)
            return f"skipped: {exc}"
        except TrainingAlreadyRunning:
            return None
        log.info("scheduled training started (%s)", reason)
        await self._notify(f"Scheduled ({reason}). {text}")
        return text

    async def _notify(self, text: str) -> None:
        log.info("%s", text)
        for chat_key in self._settings.notify_chats:
            await self._outbox.send(chat_key, text)
