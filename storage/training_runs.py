"""Training runs: who started which, how it ended; never two running at once.

With ``training.runner = "queue"`` a run is first ``queued``; a ``selftune trainer`` worker
claims it (PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``; on SQLite a conditional update, for
a single worker), says it is alive with a heartbeat, and a run whose heartbeat went stale is
requeued (or failed, after too many attempts) by the next worker.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.errors import TrainingAlreadyRunning
from bot.types import RunStatus, TrainingRun
from storage.db import aware, insert_running
from storage.models import AdapterVersionRow, TrainingRunRow, User, utcnow

HOST = socket.gethostname()  # where a local run's pid is looked up


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
        host=row.host,
        attempts=row.attempts,
    )


@dataclass(frozen=True)
class Claimed:
    """A queued run a worker took: the run, and where its requester hears the result."""

    run: TrainingRun
    notify_to: str | None


@dataclass(frozen=True)
class Ended:
    """A queued run that ended and whose requester has not been told yet."""

    run: TrainingRun
    notify_to: str


_QUEUED, _RUNNING = str(RunStatus.QUEUED), str(RunStatus.RUNNING)


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
                status=str(RunStatus.RUNNING),
                trigger=trigger,
                requested_by=requested_by,
                pid=pid,
                host=HOST,  # its pid means something on this machine only
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
            # A worker's run (it has a heartbeat) may live on another machine: its pid says
            # nothing here; the workers requeue it when its heartbeat goes stale. A local run
            # of another machine (or container) sharing the database is judged there.
            stale = [
                row
                for row in rows
                if row.heartbeat_at is None and row.host in (None, HOST) and not is_alive(row.pid)
            ]
            for row in stale:
                row.status, row.finished_at = str(RunStatus.INTERRUPTED), utcnow()
                row.message = "the process running it ended before it finished"
            return len(stale)

    # The trainer queue.

    async def enqueue(self, trigger: str, requested_by: str | None, notify_to: str | None) -> int:
        """Queue a run for a trainer worker; returns its id."""
        async with self._sessions.begin() as session:
            row = TrainingRunRow(
                status=_QUEUED, trigger=trigger, requested_by=requested_by, notify_to=notify_to
            )
            session.add(row)
            await session.flush()
            return row.id

    async def pending(self) -> TrainingRun | None:
        """The running run, else the oldest queued one, else None."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(TrainingRunRow)
                .where(TrainingRunRow.status.in_((_QUEUED, _RUNNING)))
                .order_by(TrainingRunRow.id)
            )
            found = sorted(rows, key=lambda row: row.status != _RUNNING)
            return _run(found[0]) if found else None

    async def claim(self, host: str, pid: int) -> Claimed | None:
        """Take the oldest queued run for the worker ``host``/``pid`` and mark it running;
        None when none is queued, or a run is running already (one at a time, as locally).

        PostgreSQL: the row is locked with SKIP LOCKED, so concurrent workers pass over each
        other's pick instead of waiting for it; the conditional update is what makes SQLite
        (which has no row locks) safe for one worker, and any backend safe for a lost race."""
        try:
            async with self._sessions.begin() as session:
                if await session.scalar(select(TrainingRunRow.id).where(_is_running())):
                    return None
                row = await session.scalar(
                    select(TrainingRunRow)
                    .where(TrainingRunRow.status == _QUEUED)
                    .order_by(TrainingRunRow.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                if row is None or not await self._take(session, row.id, host, pid):
                    return None
                await session.refresh(row)
                return Claimed(_run(row), row.notify_to)
        except IntegrityError:  # another worker's run became the running one meanwhile
            return None

    @staticmethod
    async def _take(session: AsyncSession, run_id: int, host: str, pid: int) -> bool:
        now = utcnow()
        result = await session.execute(
            update(TrainingRunRow)
            .where(TrainingRunRow.id == run_id, TrainingRunRow.status == _QUEUED)
            .values(
                status=_RUNNING,
                host=host,
                pid=pid,
                heartbeat_at=now,
                started_at=now,
                attempts=TrainingRunRow.attempts + 1,
            )
        )
        return _count(result) == 1

    async def heartbeat(self, run_id: int, host: str, pid: int) -> bool:
        """The worker is alive and still holds ``run_id``; False when it no longer does (it
        was taken as stale and requeued or failed): the worker must stop that run."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(TrainingRunRow).where(_held(run_id, host, pid)).values(heartbeat_at=utcnow())
            )
            return _count(result) == 1

    async def set_output(self, run_id: int, output: str) -> None:
        """Where the run writes its adapter: removed if the run is abandoned half-way."""
        async with self._sessions.begin() as session:
            (await session.get_one(TrainingRunRow, run_id)).output = output

    async def requeue(self, run_id: int, host: str, pid: int) -> bool:
        """Give a run back to the queue (its worker was stopped): not counted as an attempt."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(TrainingRunRow)
                .where(_held(run_id, host, pid))
                .values(**_unclaimed(), attempts=TrainingRunRow.attempts - 1)
            )
            return _count(result) == 1

    async def recover_stale(
        self,
        older_than: datetime,
        max_attempts: int,
        cleanup: Callable[[str], Awaitable[None]],
    ) -> list[TrainingRun]:
        """Requeue the running runs whose worker's heartbeat is older than ``older_than`` (it
        was killed, or its machine went away), or fail them after ``max_attempts``. Each
        one's half-written output is ``cleanup``-ed while the row is still locked, so no
        worker can have taken it again and be writing there."""
        async with self._sessions.begin() as session:
            rows = (
                await session.scalars(
                    select(TrainingRunRow)
                    .where(_is_running(), TrainingRunRow.heartbeat_at < older_than)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                version = await session.scalar(
                    select(AdapterVersionRow.version).where(
                        AdapterVersionRow.training_run_id == row.id
                    )
                )
                if version is not None:  # it died after registering its version: that stands
                    _registered(row, version)
                    continue
                if row.output:
                    await cleanup(row.output)
                _give_up_or_requeue(row, max_attempts)
            return [_run(row) for row in rows]

    async def ended_unannounced(self, limit: int = 20) -> list[Ended]:
        """The newest ``limit`` queued runs that ended and whose requester was not told,
        oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(TrainingRunRow)
                .where(
                    TrainingRunRow.notify_to.is_not(None),
                    TrainingRunRow.announced.is_(False),
                    TrainingRunRow.status.not_in((_QUEUED, _RUNNING)),
                )
                .order_by(TrainingRunRow.id.desc())
                .limit(limit)
            )
            return [Ended(_run(row), row.notify_to or "") for row in reversed(rows.all())]

    async def announce(self, run_id: int, *, told: bool = True) -> bool:
        """Take the telling of ``run_id``'s result: True for exactly one caller.
        ``told=False`` gives it back (the message could not be sent: another try tells it)."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(TrainingRunRow)
                .where(TrainingRunRow.id == run_id, TrainingRunRow.announced.is_(not told))
                .values(announced=told)
            )
            return _count(result) == 1


def _is_running() -> Any:
    return TrainingRunRow.status == _RUNNING


def _held(run_id: int, host: str, pid: int) -> Any:
    return (
        (TrainingRunRow.id == run_id)
        & _is_running()
        & (TrainingRunRow.host == host)
        & (TrainingRunRow.pid == pid)
    )


def _unclaimed() -> dict[str, Any]:
    return {"status": _QUEUED, "host": None, "pid": None, "heartbeat_at": None, "output": None}


def _registered(row: TrainingRunRow, version: int) -> None:
    """A run whose worker died after registering its version (published whole): the version
    stands (it may be live already), so the run ends, not trains again."""
    row.status, row.finished_at, row.adapter_version = str(RunStatus.SUCCEEDED), utcnow(), version
    row.message = (
        f"Training run #{row.id} made version {version}; its trainer stopped before it said "
        "more. /adapters shows whether the version is live."
    )


def _give_up_or_requeue(row: TrainingRunRow, max_attempts: int) -> None:
    last = f"{row.host or '?'} (pid {row.pid})"
    if row.attempts >= max_attempts:
        row.status, row.finished_at = str(RunStatus.FAILED), utcnow()
        row.message = (
            f"Training run #{row.id} failed: its trainer stopped answering {row.attempts} "
            f"time(s), the last on {last}; not retried again (training.max_attempts = "
            f"{max_attempts}). Nothing changed: the serving adapter is the same."
        )
    else:
        for name, value in _unclaimed().items():
            setattr(row, name, value)


def _count(result: Any) -> int:
    """The rows an UPDATE matched (SQLAlchemy types ``execute``'s result loosely)."""
    return int(result.rowcount)
