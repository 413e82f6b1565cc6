"""Counts and votes over time, for /status and /stats."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.db import aware
from storage.models import Chat, Rating, User
from storage.models import Exchange as ExchangeRow


@dataclass(frozen=True)
class Counts:
    """Totals for /status: users, chats, exchanges (and failed ones), 👍 and 👎."""

    users: int
    chats: int
    exchanges: int
    failed_exchanges: int
    ups: int
    downs: int


@dataclass(frozen=True)
class DailyRatings:
    """One day's 👍 and 👎 for one adapter version (the /stats chart's points)."""

    day: str  # ISO date
    adapter_version: int | None
    ups: int
    downs: int


class Stats:
    """Read-only figures; one instance hangs off the Repository as ``repo.stats``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def counts(self) -> Counts:
        async with self._sessions() as session:
            users = await session.scalar(select(func.count()).select_from(User))
            chats = await session.scalar(select(func.count()).select_from(Chat))
            by_status: dict[str, int] = dict(
                (
                    await session.execute(
                        select(ExchangeRow.status, func.count()).group_by(ExchangeRow.status)
                    )
                ).all()
            )
            votes: dict[int, int] = dict(
                (
                    await session.execute(select(Rating.value, func.count()).group_by(Rating.value))
                ).all()
            )
        return Counts(
            users=users or 0,
            chats=chats or 0,
            exchanges=by_status.get("done", 0),
            failed_exchanges=by_status.get("failed", 0),
            ups=votes.get(1, 0),
            downs=votes.get(-1, 0),
        )

    async def daily_ratings(self) -> list[DailyRatings]:
        """Votes per day and per adapter version that wrote the rated reply."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Rating.updated_at, ExchangeRow.adapter_version, Rating.value).join(
                    ExchangeRow, ExchangeRow.id == Rating.exchange_id
                )
            )
            buckets: dict[tuple[str, int | None], list[int]] = {}
            for when, version, value in rows:
                bucket = buckets.setdefault((aware(when).date().isoformat(), version), [0, 0])
                bucket[0 if value > 0 else 1] += 1
        return [
            DailyRatings(day, version, ups, downs)
            for (day, version), (ups, downs) in sorted(
                buckets.items(), key=lambda item: (item[0][0], item[0][1] or 0)
            )
        ]
