"""A/B tests of adapter versions: at most one running; votes per version since it started."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.errors import ABTestRunning
from storage.db import aware, insert_running
from storage.models import ABTestRow, AdapterVersionRow, Rating, utcnow
from storage.models import Exchange as ExchangeRow


class ABStatus(enum.StrEnum):
    """The state of an A/B test: running, or how it ended."""

    RUNNING = "running"
    PROMOTED = "promoted"  # the candidate went live for everyone
    RETIRED = "retired"  # the candidate was taken out of use
    REPLACED = "replaced"  # a newer candidate took its place


@dataclass(frozen=True)
class ABTest:
    """An A/B test: the candidate, the control it is compared with, and its share of chats."""

    id: int
    candidate: int
    control: int | None  # the version serving the other chats when it started (None: base)
    share: float
    status: ABStatus
    started_by: str | None
    message: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class VersionVotes:
    """👍/👎 on replies one adapter version wrote."""

    ups: int = 0
    downs: int = 0

    @property
    def total(self) -> int:
        return self.ups + self.downs


def _test(row: ABTestRow) -> ABTest:
    return ABTest(
        id=row.id,
        candidate=row.candidate,
        control=row.control,
        share=row.share,
        status=ABStatus(row.status),
        started_by=row.started_by,
        message=row.message,
        started_at=aware(row.started_at),
        ended_at=aware(row.ended_at) if row.ended_at else None,
    )


class ABTests:
    """The ``ab_tests`` table; one instance hangs off the Repository as ``repo.ab``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def running(self) -> ABTest | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(ABTestRow).where(ABTestRow.status == str(ABStatus.RUNNING))
            )
            return _test(row) if row else None

    async def start(
        self, candidate: int, control: int | None, share: float, started_by: str | None
    ) -> ABTest:
        """Record a running test; raises ABTestRunning if one is running already (the
        database decides: a unique index on the ``running`` rows, across processes)."""

        async def refuse(clash: IntegrityError) -> None:
            running = await self.running()
            if running is not None:
                raise ABTestRunning(
                    f"A/B test #{running.id} of v{running.candidate} is running"
                ) from None
            if await self._unknown(candidate):  # not a clash: the foreign key refused it
                raise clash

        def new_row() -> ABTestRow:
            return ABTestRow(
                candidate=candidate,
                control=control,
                share=share,
                status=str(ABStatus.RUNNING),
                started_by=started_by,
            )

        return _test(await insert_running(self._sessions, new_row, refuse, "an A/B test"))

    async def _unknown(self, version: int) -> bool:
        async with self._sessions() as session:
            return await session.get(AdapterVersionRow, version) is None

    async def finish(self, test_id: int, status: ABStatus, message: str) -> None:
        async with self._sessions.begin() as session:
            row = await session.get_one(ABTestRow, test_id)
            row.status, row.message, row.ended_at = str(status), message, utcnow()

    async def history(self, limit: int = 10) -> list[ABTest]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ABTestRow).order_by(ABTestRow.id.desc()).limit(limit)
            )
            return [_test(row) for row in rows]

    async def votes(self, since: datetime, candidate: int) -> tuple[VersionVotes, VersionVotes]:
        """(candidate, everyone else): votes on replies written since ``since``, split by
        whether the candidate wrote them. "Everyone else" is the control group: the chats not
        assigned to the candidate, whatever version served them."""
        is_candidate = func.coalesce(ExchangeRow.adapter_version, 0) == candidate
        async with self._sessions() as session:
            rows = await session.execute(
                select(is_candidate, Rating.value, func.count())
                .join(ExchangeRow, ExchangeRow.id == Rating.exchange_id)
                .where(ExchangeRow.created_at >= since)
                .group_by(is_candidate, Rating.value)
            )
            counts = {(bool(flag), value): n for flag, value, n in rows}
        return (
            VersionVotes(counts.get((True, 1), 0), counts.get((True, -1), 0)),
            VersionVotes(counts.get((False, 1), 0), counts.get((False, -1), 0)),
        )
