"""What several serving processes on one database decide together: who holds a role, whose
turn a chat is, how many messages a user may still send.

One interface, two implementations, chosen by the database (``coordination_for``):

- SQLite (one serving process per data dir, ``bot.startup.InstanceLock``): in process memory.
- PostgreSQL: session-level advisory locks (``pg_try_advisory_lock``) on one dedicated
  connection per process, so the server releases every lock a process held the moment it
  exits or crashes; per-user limits counted in ``rate_events`` under a transaction-level
  advisory lock per user. Session locks rather than transaction locks for roles and chats:
  a chat's turn lasts a whole streamed reply, and holding an open transaction (a pooled
  connection) per chat in flight would exhaust the pool with many chats at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from storage.db import aware, is_sqlite
from storage.models import RateEvent

log = logging.getLogger(__name__)


class Coordination(Protocol):
    """Decisions shared by every serving process on one database."""

    shared: bool  # True where other processes take part (PostgreSQL)

    async def try_role(self, role: str) -> bool:
        """Take an exclusive role (``console``, ``schedule``…) for this process's lifetime;
        False if another process holds it."""
        ...

    def chat_turn(self, key: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to take ``key``'s turn (a chat's updates are handled by one process, one at a
        time); yields whether it was taken, and gives it back on exit."""
        ...

    async def unheld(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` whose turn no process holds now (one question for them all)."""
        ...

    async def rate_check(self, user_key: str, limit: int, window_s: float) -> float:
        """Record a message of ``user_key`` if allowed: 0, else the seconds until one is."""
        ...

    async def lost_roles(self) -> set[str]:
        """The roles taken earlier that this process holds no more: its locks went with a
        dropped database connection and another process took them meanwhile. Checks the
        connection (reconnecting takes the roles again); raises while the database is away."""
        ...

    async def aclose(self) -> None:
        """Give back everything held."""
        ...


def coordination_for(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> Coordination:
    """In memory on SQLite, in the database on PostgreSQL."""
    if is_sqlite(str(engine.url)):
        return LocalCoordination()
    return PostgresCoordination(engine, sessions)


class SlidingWindow:
    """At most ``limit`` events per ``window_s`` per key, in memory (what SQLite uses)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def check(self, key: str, limit: int, window_s: float) -> float:
        """Record an event; returns 0 if allowed, else the seconds until the next one is."""
        if limit <= 0:
            return 0.0
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= window_s:
            events.popleft()
        if len(events) >= limit:
            return window_s - (now - events[0])
        events.append(now)
        return 0.0


class LocalCoordination:
    """One process decides alone: every role is its own (the data-dir lock keeps out any
    other), turns are a set of keys, limits a sliding window in memory."""

    shared = False

    def __init__(self) -> None:
        self._turns: set[str] = set()
        self._window = SlidingWindow()

    async def try_role(self, role: str) -> bool:  # noqa: ARG002 - every role is this one's
        return True

    @contextlib.asynccontextmanager
    async def chat_turn(self, key: str) -> AsyncIterator[bool]:
        if key in self._turns:
            yield False
            return
        self._turns.add(key)
        try:
            yield True
        finally:
            self._turns.discard(key)

    async def unheld(self, keys: list[str]) -> list[str]:
        return [key for key in keys if key not in self._turns]

    async def rate_check(self, user_key: str, limit: int, window_s: float) -> float:
        return self._window.check(user_key, limit, window_s)

    async def lost_roles(self) -> set[str]:
        return set()

    async def aclose(self) -> None:
        self._turns.clear()


def lock_id(kind: str, name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``kind:name`` (same in every process)."""
    digest = hashlib.blake2b(f"selftune:{kind}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _signed(value: int) -> int:
    """pg_locks shows a bigint key as two unsigned 32-bit halves: back to the signed key."""
    return value - (1 << 64) if value >= 1 << 63 else value


class PostgresCoordination:
    """Advisory locks on one dedicated connection (opened on first use), and rate events."""

    shared = True

    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._engine = engine
        self._sessions = sessions
        self._connection: AsyncConnection | None = None
        self._io = asyncio.Lock()  # one statement at a time on the dedicated connection
        self._turns: set[str] = set()  # session locks are re-entrant: refuse a second taker here
        self._roles: set[str] = set()  # taken by this process
        self._lost: set[str] = set()  # taken, then lost with a connection, and taken by another

    async def _open(self) -> AsyncConnection:
        """The dedicated connection; a new one after a drop takes this process's roles again
        (the locks went with the old one), noting those another process took meanwhile."""
        connection = await self._engine.connect().start()
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        for role in sorted(self._roles - self._lost):
            key = lock_id("role", role)
            if not await connection.scalar(select(func.pg_try_advisory_lock(key))):
                log.error("the role %r was lost with a database connection", role)
                self._lost.add(role)
        return connection

    async def _on_connection(self, query: Any) -> Any:
        """One statement on the dedicated connection (opened as needed), with ``_io`` held."""
        if self._connection is None:
            self._connection = await self._open()
        try:
            return await self._connection.scalar(query)
        except Exception:
            # The connection died (the server restarted): its locks went with it. The next
            # call opens a new one (taking the roles again); this caller sees the error.
            with contextlib.suppress(Exception):
                await self._connection.invalidate()
            self._connection = None
            raise

    async def _try_lock(self, key: int) -> bool:
        async with self._io:
            return bool(await self._on_connection(select(func.pg_try_advisory_lock(key))))

    async def _unlock(self, key: int) -> None:
        async with self._io:
            if self._connection is not None:
                await self._connection.scalar(select(func.pg_advisory_unlock(key)))

    async def try_role(self, role: str) -> bool:
        taken = await self._try_lock(lock_id("role", role))
        if taken:
            self._roles.add(role)
        return taken

    async def lost_roles(self) -> set[str]:
        async with self._io:
            await self._on_connection(select(1))
        return set(self._lost)

    @contextlib.asynccontextmanager
    async def chat_turn(self, key: str) -> AsyncIterator[bool]:
        if key in self._turns:
            yield False
            return
        self._turns.add(key)
        try:
            held = await self._try_lock(lock_id("chat", key))
            try:
                yield held
            finally:
                if held:
                    await asyncio.shield(self._unlock(lock_id("chat", key)))
        finally:
            self._turns.discard(key)

    async def unheld(self, keys: list[str]) -> list[str]:
        if not keys:
            return []
        async with self._sessions() as session:
            rows = await session.execute(
                text(
                    "SELECT classid, objid FROM pg_locks "
                    "WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
                )
            )
            held = {_signed(int(high) << 32 | int(low)) for high, low in rows}
        return [key for key in keys if lock_id("chat", key) not in held]

    async def rate_check(self, user_key: str, limit: int, window_s: float) -> float:
        if limit <= 0:
            return 0.0
        async with self._sessions.begin() as session:
            # One user's checks in turn, whichever process makes them.
            await session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_id("rate", user_key)}
            )
            now: datetime = aware(
                (await session.execute(select(func.clock_timestamp()))).scalar_one()
            )
            start = now - timedelta(seconds=window_s)
            await session.execute(
                delete(RateEvent).where(RateEvent.user_key == user_key, RateEvent.at <= start)
            )
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(RateEvent.at)).where(
                        RateEvent.user_key == user_key
                    )
                )
            ).one()
            if count >= limit and oldest is not None:
                return max(0.0, window_s - (now - aware(oldest)).total_seconds())
            session.add(RateEvent(user_key=user_key, at=now))
        return 0.0

    async def aclose(self) -> None:
        """Close the dedicated connection, not back into the pool (where its session and its
        locks would live on): the server releases every lock it held."""
        async with self._io:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.invalidate()
                    await self._connection.close()
                self._connection = None
