"""Adapter versions: one row per trained adapter, at most one of them active."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.types import AdapterStatus, AdapterVersion
from storage.db import aware
from storage.models import AdapterVersionRow


def _adapter(row: AdapterVersionRow) -> AdapterVersion:
    return AdapterVersion(
        version=row.version,
        path=row.path,
        parent=row.parent,
        created_at=aware(row.created_at),
        status=AdapterStatus(row.status),
        exchange_ids=tuple(row.exchange_ids),
        metrics=dict(row.metrics),
        hyperparams=dict(row.hyperparams),
        duration_s=row.duration_s,
        tainted=row.tainted,
    )


class AdapterStore:
    """The ``adapter_versions`` table; one instance hangs off the Repository as
    ``repo.adapters``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add(
        self,
        *,
        path: str,
        parent: int | None,
        base_model: str,
        exchange_ids: Iterable[int],
        metrics: dict[str, float],
        hyperparams: dict[str, Any],
        duration_s: float | None,
        training_run_id: int | None,
        status: AdapterStatus = AdapterStatus.READY,
        version: int | None = None,
        tainted: bool = False,
    ) -> AdapterVersion:
        """Register a version (the next number unless ``version`` is given)."""
        async with self._sessions.begin() as session:
            if version is None:
                version = (await session.scalar(select(func.max(AdapterVersionRow.version)))) or 0
                version += 1
            row = AdapterVersionRow(
                version=version,
                path=path,
                parent=parent,
                status=str(status),
                base_model=base_model,
                exchange_ids=sorted(set(exchange_ids)),
                metrics=metrics,
                hyperparams=hyperparams,
                duration_s=duration_s,
                training_run_id=training_run_id,
                tainted=tainted,
            )
            session.add(row)
            await session.flush()
            return _adapter(row)

    async def next_version(self) -> int:
        async with self._sessions() as session:
            return ((await session.scalar(select(func.max(AdapterVersionRow.version)))) or 0) + 1

    async def all(self) -> list[AdapterVersion]:
        """Every version, oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(AdapterVersionRow).order_by(AdapterVersionRow.version)
            )
            return [_adapter(row) for row in rows]

    async def get(self, version: int) -> AdapterVersion | None:
        async with self._sessions() as session:
            row = await session.get(AdapterVersionRow, version)
            return _adapter(row) if row else None

    async def active(self) -> AdapterVersion | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(AdapterVersionRow).where(
                    AdapterVersionRow.status == str(AdapterStatus.ACTIVE)
                )
            )
            return _adapter(row) if row else None

    async def set_active(self, version: int | None) -> None:
        """Make ``version`` the only active one (None: serve the base model)."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(AdapterVersionRow)
                .where(AdapterVersionRow.status == str(AdapterStatus.ACTIVE))
                .values(status=str(AdapterStatus.READY))
            )
            if version is not None:
                row = await session.get_one(AdapterVersionRow, version)
                row.status = str(AdapterStatus.ACTIVE)

    async def set_status(self, version: int, status: AdapterStatus) -> None:
        async with self._sessions.begin() as session:
            (await session.get_one(AdapterVersionRow, version)).status = str(status)
