"""The repository on SQLite and on PostgreSQL (each test runs on both backends)."""

from __future__ import annotations

import asyncio

import pytest

from bot.errors import TrainingAlreadyRunning
from bot.types import AdapterStatus, RateAction, RunStatus, Turn, Vote
from storage.db import create_engine
from storage.repository import Repository
from tests.support.records import add_version

PROMPT = (Turn("system", "Be brief."), Turn("user", "Hi there"))


async def _exchange(
    repo: Repository, chat: str = "t:1", user: str = "t:7", text: str = "Hi"
) -> int:
    message = await repo.add_user_message(chat, user, "Ann", text, "m1")
    exchange = await repo.start_exchange(chat, user, message, PROMPT, None, "tiny", {"t": 0})
    await repo.finish_exchange(exchange, f"reply to {text}")
    return exchange


async def test_history_is_the_current_conversation_oldest_first(repo: Repository) -> None:
    await _exchange(repo, text="first")
    await _exchange(repo, text="second")
    history = await repo.history("t:1", limit=10)
    assert [(m.role, m.content) for m in history] == [
        ("user", "first"),
        ("assistant", "reply to first"),
        ("user", "second"),
        ("assistant", "reply to second"),
    ]
    assert [m.content for m in await repo.history("t:1", limit=2)] == ["second", "reply to second"]
    assert await repo.new_conversation("t:1") == 2
    assert await repo.history("t:1", limit=10) == []
    assert await repo.last_exchange_id("t:1") is None


async def test_exchange_keeps_exact_prompt_and_adapter_version(repo: Repository) -> None:
    await add_version(repo, "/a/v1")
    message = await repo.add_user_message("t:1", "t:7", "Ann", "Hi there", None)
    exchange_id = await repo.start_exchange("t:1", "t:7", message, PROMPT, 1, "tiny", {})
    assert await repo.exchange(exchange_id) is None  # not answered yet
    await repo.finish_exchange(exchange_id, "Hello!")
    exchange = await repo.exchange(exchange_id)
    assert exchange is not None
    assert exchange.prompt == PROMPT
    assert (exchange.completion, exchange.adapter_version) == ("Hello!", 1)
    assert (exchange.chat_key, exchange.user_key) == ("t:1", "t:7")
    assert exchange.created_at.tzinfo is not None


async def test_failed_exchange_keeps_the_message_and_cannot_be_rated(repo: Repository) -> None:
    message = await repo.add_user_message("t:1", "t:7", "Ann", "Hi", None)
    exchange_id = await repo.start_exchange("t:1", "t:7", message, PROMPT, None, "tiny", {})
    await repo.fail_exchange(exchange_id, "boom", partial="Hel")
    assert [m.content for m in await repo.history("t:1", 10)] == ["Hi"]
    outcome = await repo.rate(exchange_id, "t:7", Vote.UP)
    assert outcome.action is RateAction.REFUSED
    counts = await repo.stats.counts()
    assert (counts.exchanges, counts.failed_exchanges) == (0, 1)


async def test_one_vote_per_user_changed_and_retracted(repo: Repository) -> None:
    exchange_id = await _exchange(repo)
    stored = await repo.rate(exchange_id, "t:7", Vote.UP)
    assert (stored.action, stored.current, stored.ups, stored.downs) == (
        RateAction.STORED,
        Vote.UP,
        1,
        0,
    )
    other = await repo.rate(exchange_id, "t:8", Vote.UP)
    assert (other.ups, other.downs) == (2, 0)
    changed = await repo.rate(exchange_id, "t:7", Vote.DOWN)
    assert (changed.action, changed.current, changed.ups, changed.downs) == (
        RateAction.CHANGED,
        Vote.DOWN,
        1,
        1,
    )
    assert await repo.user_vote(exchange_id, "t:7") is Vote.DOWN
    retracted = await repo.rate(exchange_id, "t:7", Vote.DOWN)
    assert (retracted.action, retracted.current, retracted.ups, retracted.downs) == (
        RateAction.RETRACTED,
        None,
        1,
        0,
    )
    assert await repo.user_vote(exchange_id, "t:7") is None


async def test_concurrent_first_messages_create_one_user_and_chat(repo: Repository) -> None:
    ids = await asyncio.gather(
        *(repo.add_user_message("t:new", "t:99", "Bo", f"m{i}", None) for i in range(8))
    )
    assert len(set(ids)) == 8
    counts = await repo.stats.counts()
    assert (counts.users, counts.chats) == (1, 1)


async def test_rated_exchanges_skip_opted_out_users(repo: Repository) -> None:
    liked = await _exchange(repo, text="a")
    disliked = await _exchange(repo, text="b")
    await repo.rate(liked, "t:7", Vote.UP)
    await repo.rate(disliked, "t:7", Vote.DOWN)
    await repo.rate(liked, "t:8", Vote.UP)
    rows = await repo.training.rated()
    assert sorted((r.exchange_id, r.label, r.user_key) for r in rows) == [
        (liked, True, "t:7"),
        (liked, True, "t:8"),
        (disliked, False, "t:7"),
    ]
    assert rows[0].prompt == PROMPT
    await repo.set_training_opt_out("t:8", True)
    assert {r.user_key for r in await repo.training.rated()} == {"t:7"}
    assert len(await repo.training.rated(limit=1)) == 1


async def test_forget_deletes_everything_of_the_user_and_taints_versions(repo: Repository) -> None:
    mine = await _exchange(repo, chat="t:1", user="t:7", text="mine")
    theirs = await _exchange(repo, chat="t:2", user="t:8", text="theirs")
    await repo.rate(mine, "t:7", Vote.UP)
    await repo.rate(theirs, "t:7", Vote.DOWN)
    await repo.rate(theirs, "t:8", Vote.UP)
    version = await add_version(repo, "/a/v1", exchange_ids=[mine, theirs], duration_s=1.0)
    clean = await add_version(repo, "/a/v2", exchange_ids=[theirs], duration_s=1.0)
    report = await repo.forget_user("t:7")
    assert (report.messages, report.exchanges, report.ratings) == (2, 1, 2)
    # v2 used an exchange that t:7 rated: their vote shaped it, so it is tainted too.
    assert report.tainted_versions == (version.version, clean.version)
    assert await repo.history("t:1", 10) == []
    assert [r.user_key for r in await repo.training.rated()] == ["t:8"]
    assert len(await repo.history("t:2", 10)) == 2
    assert (await repo.forget_user("t:nobody")).messages == 0


async def test_adapter_versions_have_one_active(repo: Repository) -> None:
    v1 = await add_version(
        repo,
        "/a/v1",
        exchange_ids=[3, 1, 3],
        metrics={"loss": 1.5},
        hyperparams={"r": 8},
        duration_s=2.0,
    )
    v2 = await add_version(repo, "/a/v2", parent=1)
    assert (v1.version, v2.version, v1.exchange_ids) == (1, 2, (1, 3))
    assert await repo.adapters.next_version() == 3
    assert await repo.adapters.active() is None
    await repo.adapters.set_active(1)
    await repo.adapters.set_active(2)
    active = await repo.adapters.active()
    assert active is not None and active.version == 2 and active.parent == 1
    statuses = [v.status for v in await repo.adapters.all()]
    assert statuses == [AdapterStatus.READY, AdapterStatus.ACTIVE]
    await repo.adapters.set_active(None)
    assert await repo.adapters.active() is None
    await repo.adapters.set_status(1, AdapterStatus.REJECTED)
    found = await repo.adapters.get(1)
    assert found is not None and found.status is AdapterStatus.REJECTED
    assert found.metrics == {"loss": 1.5}


async def test_training_runs_never_overlap(repo: Repository) -> None:
    run = await repo.runs.start("command", "t:1", pid=123)
    with pytest.raises(TrainingAlreadyRunning):
        await repo.runs.start("schedule", None, pid=124)
    running = await repo.runs.running()
    assert running is not None and running.id == run
    assert await repo.runs.interrupt_stale(lambda pid: pid == 123) == 0
    assert await repo.runs.interrupt_stale(lambda pid: False) == 1
    assert await repo.runs.running() is None
    second = await repo.runs.start("cli", None, pid=125)
    await repo.runs.finish(
        second, RunStatus.SUCCEEDED, "ok", adapter_version=1, report={"loss": 1.0}
    )
    runs = await repo.runs.recent()
    assert [(r.id, r.status) for r in runs] == [
        (second, RunStatus.SUCCEEDED),
        (run, RunStatus.INTERRUPTED),
    ]


async def _racing(db_url: str, count: int) -> list[Repository]:
    """``count`` repositories on one database, as separate processes would have."""
    repos = [Repository(create_engine(db_url)) for _ in range(count)]
    for other in repos:  # each connects before the race starts
        await other.runs.recent()
    return repos


async def test_training_runs_never_overlap_across_processes(repo: Repository, db_url: str) -> None:
    repos = await _racing(db_url, 6)
    try:
        results = await asyncio.gather(
            *(other.runs.start("command", None, pid=100 + i) for i, other in enumerate(repos)),
            return_exceptions=True,
        )
        started = [r for r in results if isinstance(r, int)]
        refused = [r for r in results if isinstance(r, TrainingAlreadyRunning)]
        assert len(started) == 1 and len(refused) == len(repos) - 1, results
        assert all(r.run.id == started[0] for r in refused)
        assert len([r for r in await repo.runs.recent() if r.status is RunStatus.RUNNING]) == 1
    finally:
        for other in repos:
            await other.aclose()


async def test_ab_tests_never_overlap_across_processes(repo: Repository, db_url: str) -> None:
    from bot.errors import ABTestRunning

    await add_version(repo, "/a/v1")
    repos = await _racing(db_url, 6)
    try:
        results = await asyncio.gather(
            *(other.ab.start(1, None, 0.5, None) for other in repos), return_exceptions=True
        )
        started = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, ABTestRunning)]
        assert len(started) == 1 and len(refused) == len(repos) - 1, results
    finally:
        for other in repos:
            await other.aclose()


async def test_daily_ratings_per_adapter_version(repo: Repository) -> None:
    first = await _exchange(repo, text="a")
    second = await _exchange(repo, text="b")
    await repo.rate(first, "t:7", Vote.UP)
    await repo.rate(second, "t:7", Vote.DOWN)
    await repo.rate(second, "t:8", Vote.DOWN)
    daily = await repo.stats.daily_ratings()
    assert [(d.adapter_version, d.ups, d.downs) for d in daily] == [(None, 1, 2)]


async def test_ratings_since_unrated_and_withdrawn(repo: Repository) -> None:
    from datetime import UTC, datetime, timedelta

    before = datetime.now(UTC) - timedelta(seconds=1)
    rated = await _exchange(repo, text="a")
    unrated = await _exchange(repo, text="b")
    await repo.rate(rated, "t:7", Vote.UP)
    assert await repo.training.ratings_since(before) == 1
    assert await repo.training.ratings_since(datetime.now(UTC) + timedelta(seconds=1)) == 0
    assert [e.id for e in await repo.training.unrated(10)] == [unrated]
    await repo.set_training_opt_out("t:7", True)  # the author opted out: not even unrated text
    assert await repo.training.unrated(10) == []
    assert await repo.training.withdrawn([rated, unrated]) == set()
    await repo.forget_user("t:7")
    assert await repo.training.withdrawn([rated, unrated, 999]) == {rated, unrated, 999}


async def test_forget_scrubs_group_prompts_that_quote_the_user(repo: Repository) -> None:
    bob_message = await repo.add_user_message("t:g", "t:8", "Bob", "my secret", None)
    bob = await repo.start_exchange("t:g", "t:8", bob_message, PROMPT, None, "tiny", {})
    await repo.finish_exchange(bob, "noted")
    quoting = (
        Turn("system", "Be brief."),
        Turn("user", "Bob: my secret"),
        Turn("assistant", "noted"),
        Turn("user", "Ann: hello"),
    )
    message = await repo.add_user_message("t:g", "t:7", "Ann", "hello", None)
    ann = await repo.start_exchange("t:g", "t:7", message, quoting, None, "tiny", {})
    await repo.finish_exchange(ann, "hi Ann")
    clean = await _exchange(repo, chat="t:other", user="t:7", text="elsewhere")
    for exchange in (ann, clean):
        await repo.rate(exchange, "t:7", Vote.UP)
    await repo.forget_user("t:8")
    assert {r.exchange_id for r in await repo.training.rated()} == {clean}
    stored = await repo.exchange(ann)
    assert stored is not None
    assert [t.content for t in stored.prompt] == [
        "Be brief.",
        "[forgotten]",
        "[forgotten]",
        "Ann: hello",
    ]


async def test_ab_tests_one_running_and_votes_per_group(repo: Repository) -> None:
    from bot.errors import ABTestRunning
    from storage.abtests import ABStatus

    for version in (1, 2):
        await add_version(repo, f"/a/v{version}")
    old = await _exchange(repo, text="before the test")
    await repo.rate(old, "t:7", Vote.DOWN)
    test = await repo.ab.start(2, 1, 0.25, "t:1")
    assert (test.candidate, test.control, test.share, test.status) == (2, 1, 0.25, "running")
    with pytest.raises(ABTestRunning):
        await repo.ab.start(1, None, 0.5, None)
    for version, vote in ((2, Vote.UP), (2, Vote.UP), (2, Vote.DOWN), (1, Vote.DOWN)):
        message = await repo.add_user_message("t:1", "t:7", "Ann", "x", None)
        exchange = await repo.start_exchange("t:1", "t:7", message, PROMPT, version, "m", {})
        await repo.finish_exchange(exchange, "y")
        await repo.rate(exchange, "t:9", vote)
    candidate, control = await repo.ab.votes(test.started_at, 2)
    assert (candidate.ups, candidate.downs, control.ups, control.downs) == (2, 1, 0, 1)
    running = await repo.ab.running()
    assert running is not None and running.id == test.id
    await repo.ab.finish(test.id, ABStatus.PROMOTED, "done")
    assert await repo.ab.running() is None
    (ended,) = await repo.ab.history()
    assert ended.status is ABStatus.PROMOTED and ended.ended_at is not None
