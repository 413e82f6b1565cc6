"""Coordination: roles, chat turns and per-user limits, in memory on SQLite and shared through
the database on PostgreSQL (two repositories on one database stand for two processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from storage.db import create_engine
from storage.repository import Repository

PLATFORM = "telegram:1"


@pytest.fixture
async def other(repo: Repository, db_url: str) -> AsyncIterator[Repository]:
    """A second process's repository on the same (migrated) database."""
    second = Repository(create_engine(db_url))
    yield second
    await second.aclose()


async def test_a_chat_turn_is_taken_once_and_given_back(repo: Repository) -> None:
    turns = repo.coordination
    async with turns.chat_turn("telegram:1/5") as first:
        async with turns.chat_turn("telegram:1/5") as second:
            assert (first, second) == (True, False)
        async with turns.chat_turn("telegram:1/6") as elsewhere:
            assert elsewhere
    async with turns.chat_turn("telegram:1/5") as again:
        assert again


@pytest.mark.postgres
async def test_postgres_turns_and_roles_hold_across_processes(
    repo: Repository, other: Repository, db_url: str
) -> None:
    if not repo.coordination.shared:
        pytest.skip("SQLite: one process per data dir")
    async with (
        repo.coordination.chat_turn("telegram:1/5") as mine,
        other.coordination.chat_turn("telegram:1/5") as theirs,
    ):
        assert (mine, theirs) == (True, False)
    async with other.coordination.chat_turn("telegram:1/5") as theirs:
        assert theirs  # given back
    assert await repo.coordination.try_role("schedule")
    assert not await other.coordination.try_role("schedule")
    assert await other.coordination.try_role("console")
    await repo.coordination.aclose()  # the process exits: the server releases its locks
    assert await other.coordination.try_role("schedule")


async def _drop_connections(repo: Repository, db_url: str) -> None:
    """What a PostgreSQL restart does to ``repo``'s process: its dedicated connection (and
    with it every advisory lock it held) is gone."""
    engine = create_engine(db_url)
    try:
        async with engine.connect() as admin:
            await admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_roles_are_taken_again_after_a_dropped_connection_or_said_lost(
    repo: Repository, other: Repository, db_url: str
) -> None:
    if not repo.coordination.shared:
        pytest.skip("SQLite: one process per data dir")
    assert await repo.coordination.try_role("schedule")
    assert await repo.coordination.try_role("console")
    assert await repo.coordination.lost_roles() == set()
    await _drop_connections(repo, db_url)
    with pytest.raises(DBAPIError):  # the first look finds the connection gone
        await repo.coordination.lost_roles()
    assert await repo.coordination.lost_roles() == set()  # reconnected: both taken again
    assert not await other.coordination.try_role("schedule")
    # Dropped again, and another process takes a role before this one is back.
    await _drop_connections(repo, db_url)
    assert await other.coordination.try_role("schedule")
    with pytest.raises(DBAPIError):
        await repo.coordination.lost_roles()
    assert await repo.coordination.lost_roles() == {"schedule"}
    assert not await other.coordination.try_role("console")  # that one it took again


async def test_sqlite_holds_every_role(repo: Repository, db_url: str) -> None:
    if repo.coordination.shared:
        pytest.skip("PostgreSQL: roles are exclusive (test above)")
    assert await repo.coordination.try_role("schedule")
    assert await repo.coordination.try_role("schedule")


async def test_rate_limit_counts_allowed_messages(repo: Repository, other: Repository) -> None:
    check = repo.coordination.rate_check
    assert await check("telegram:7", 2, 60.0) == 0.0
    assert await check("telegram:7", 2, 60.0) == 0.0
    wait = await check("telegram:7", 2, 60.0)
    assert 0.0 < wait <= 60.0
    assert await check("telegram:8", 2, 60.0) == 0.0  # per user
    assert await check("telegram:7", 0, 60.0) == 0.0  # 0: no limit
    if repo.coordination.shared:  # the other process sees the same count
        assert await other.coordination.rate_check("telegram:7", 2, 60.0) > 0.0


async def test_rate_limit_window_slides(repo: Repository) -> None:
    check = repo.coordination.rate_check
    assert await check("telegram:9", 1, 0.2) == 0.0
    assert await check("telegram:9", 1, 0.2) > 0.0
    await asyncio.sleep(0.25)
    assert await check("telegram:9", 1, 0.2) == 0.0


async def test_a_chats_updates_wait_in_update_order(repo: Repository) -> None:
    log = repo.deliveries
    items = [("10", {"n": 10}), ("9", {"n": 9}), ("11", {"n": 11}), ("12", {"n": 12})]
    assert await log.receive(PLATFORM, items, {"10": "5", "9": "5", "11": "6"}) == [
        "10",
        "9",
        "11",
        "12",
    ]
    assert [p.key for p in await log.pending_in_chat(PLATFORM, "5")] == ["9", "10"]
    assert sorted(await log.pending_chats(PLATFORM)) == ["5", "6"]
    assert [p.key for p in await log.unfinished(PLATFORM, chatless=True)] == ["12"]
    await log.finish(PLATFORM, "9")
    await log.finish(PLATFORM, "10")
    assert await log.pending_chats(PLATFORM) == ["6"]
    assert await log.receive_one(PLATFORM, "11", {"n": 11}, "6") is False  # stored before


async def test_the_sweep_sees_only_chats_whose_turn_is_free(
    repo: Repository, other: Repository
) -> None:
    log = repo.deliveries
    await log.receive(PLATFORM, [("1", {}), ("2", {})], {"1": "5", "2": "6"})
    holder = other if repo.coordination.shared else repo  # another process, or this one
    async with holder.deliveries.chat_turn(PLATFORM, "5") as held:
        assert held
        assert await log.pending_chats(PLATFORM, timedelta(0)) == ["6"]
    assert sorted(await log.pending_chats(PLATFORM, timedelta(0))) == ["5", "6"]
    assert await log.pending_chats(PLATFORM, timedelta(hours=1)) == []  # too recent
