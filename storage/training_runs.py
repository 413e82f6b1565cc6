"""Training runs: who started which, how it ended; never two running at once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.errors import TrainingAlreadyRunning
from bot.types import RunStatus, TrainingRun
from storage.db import aware, insert_running
from storage.models import TrainingRunRow, User, utcnow


def _run(row: TrainingRunRow) -> TrainingRun:
    return TrainingRun(
        id=row.id,
        status=RunStatus(row.status),
        trigger=row.trigger,
        requested_by=row.requested_by,
        started_at=aware(row.started_at),
        finished_at=aware(row.finished_at) if row.finished_at else None,
        adapter_version=row.adapter_version,
        message=row.message,
    )


class TrainingRuns:
    """The ``training_runs`` table; one instance hangs off the Repository as ``repo.runs``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def start(self, trigger: str, requested_by: str | None, pid: int) -> int:
        """Record a new running training; raises TrainingAlreadyRunning if one is running.

        The database decides (a unique index on the ``running`` rows), so two processes that
        start at the same moment never both get a run: the loser's insert fails."""

        async def refuse(_clash: IntegrityError) -> None:
            running = await self.running()
            if running is not None:
                raise TrainingAlreadyRunning(running) from None

        def new_row() -> TrainingRunRow:
            return TrainingRunRow(
                status=str(RunStatus.RUNNING), trigger=trigger, requested_by=requested_by, pid=pid
            )

        row = await insert_running(self._sessions, new_row, refuse, "a training run")
        return row.id

    async def finish(
        self,
        run_id: int,
        status: RunStatus,
        message: str,
        *,
        adapter_version: int | None = None,
        report: dict[str, Any] | None = None,
    ) -> None:
        async with self._sessions.begin() as session:
            row = await session.get_one(TrainingRunRow, run_id)
            row.status, row.message, row.finished_at = str(status), message, utcnow()
            row.adapter_version = adapter_version
            if report is not None:
                row.report = report

    async def running(self) -> TrainingRun | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(TrainingRunRow).where(TrainingRunRow.status == str(RunStatus.RUNNING))
            )
            return _run(row) if row else None

    async def forgotten_since(self, user_keys: Iterable[str], since: datetime) -> set[str]:
        """Those of ``user_keys`` who used /forget at or after ``since`` (while a run trained
        on their ratings): the version it trains is marked tainted."""
        wanted = set(user_keys)
        if not wanted:
            return set()
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(User.key, User.forgotten_at).where(
                        User.key.in_(wanted), User.forgotten_at.is_not(None)
                    )
                )
            ).all()
        return {key for key, when in rows if when is not None and aware(when) >= since}

    async def recent(self, limit: int = 10) -> list[TrainingRun]:
        """The newest ``limit`` runs, newest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(TrainingRunRow).order_by(TrainingRunRow.id.desc()).limit(limit)
            )
            return [_run(row) for row in rows]

    async def interrupt_stale(self, is_alive: Callable[[int | None], bool]) -> int:
        """Mark running runs whose process is gone as interrupted (after a crash or a kill)."""
        async with self._sessions.begin() as session:
            rows = (
                await session.scalars(
                    select(TrainingRunRow).where(TrainingRunRow.status == str(RunStatus.RUNNING))
                )
            ).all()
            stale = [row for row in rows if not is_alive(row.pid)]
            for row in stale:
                row.status, row.finished_at = str(RunStatus.INTERRUPTED), utcnow()
                row.message = "the process running it ended before it finished"
            return len(stale)
