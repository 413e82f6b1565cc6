"""Engine and session factory: SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def is_sqlite(url: str) -> bool:
    """Whether the database URL names SQLite."""
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """The async engine; SQLite gets WAL, foreign keys and a busy timeout on each connection."""
    if not is_sqlite(url):
        return create_async_engine(url, echo=echo, pool_pre_ping=True)
    engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers (a CLI `selftune adapters`, the trainer's export) run beside the bot.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no expiry)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def aware(value: datetime) -> datetime:
    """A stored datetime as UTC (SQLite hands back naive ones; everything stored is UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


Row = TypeVar("Row")


async def insert_running(
    sessions: async_sessionmaker[AsyncSession],
    make_row: Callable[[], Row],
    on_conflict: Callable[[IntegrityError], Awaitable[None]],
    what: str,
) -> Row:
    """Insert a ``running`` row that a partial unique index allows once (across processes).

    Insert first and read nothing before: a read would make SQLite's write-lock upgrade fail
    at once instead of waiting for the other writer. On a clash ``on_conflict`` raises what
    the caller should see (e.g. "already running"); if it returns, the running row ended in
    between and the insert is tried again.
    """
    for _ in range(3):
        try:
            async with sessions.begin() as session:
                row = make_row()
                session.add(row)
                await session.flush()
                return row
        except IntegrityError as exc:
            await on_conflict(exc)
    raise RuntimeError(f"could not record {what}: the running one kept changing")
