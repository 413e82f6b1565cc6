"""repo.curation and the login nonces on both backends: decisions, the audit log, replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.types import Vote
from storage.curation import CurationError
from storage.repository import Repository
from tests.web.support import exchange


async def test_user_controls_and_their_audit(repo: Repository) -> None:
    assert not await repo.curation.is_blocked("telegram:5")
    control = await repo.curation.set_user("telegram:5", "telegram:1", blocked=True)
    assert control.blocked and not control.ratings_excluded
    await repo.curation.set_user("telegram:5", "telegram:1", ratings_excluded=True)
    assert await repo.curation.is_blocked("telegram:5")
    assert set(await repo.curation.controls()) == {"telegram:5"}
    entries = await repo.curation.audit()
    assert [e.action for e in entries] == ["user.exclude_ratings", "user.block"]
    assert all(e.actor == "telegram:1" and e.target == "user:telegram:5" for e in entries)


async def test_a_blocked_raters_votes_never_train_and_come_back_when_unblocked(
    repo: Repository,
) -> None:
    first = await exchange(repo, "telegram:9", "telegram:9", "Ann", "hi", "hello")
    await repo.rate(first, "telegram:9", Vote.UP)
    await repo.rate(first, "telegram:8", Vote.DOWN)
    await repo.curation.set_user("telegram:8", "admin:1", blocked=True)
    assert [r.user_key for r in await repo.training.rated()] == ["telegram:9"]
    await repo.curation.set_user("telegram:8", "admin:1", blocked=False)
    assert len(await repo.training.rated()) == 2


async def test_flip_drop_and_never_train(repo: Repository) -> None:
    first = await exchange(repo, "telegram:9", "telegram:9", "Ann", "hi", "hello")
    await repo.rate(first, "telegram:9", Vote.UP)
    [rated] = await repo.training.rated()
    assert await repo.curation.flip_rating(1, "admin:1") == -1
    [flipped] = await repo.training.rated()
    assert flipped.label is False and flipped.rated_at == rated.rated_at  # not a new vote
    await repo.curation.never_train(first, "admin:1")
    assert await repo.training.rated() == [] and await repo.training.unrated(10) == []
    await repo.curation.drop_rating(1, "admin:1")
    with pytest.raises(CurationError):
        await repo.curation.drop_rating(1, "admin:1")
    with pytest.raises(CurationError):
        await repo.curation.never_train(999, "admin:1")
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert await repo.curation.summary_since(since) == {
        "rating.flip": 1,
        "exchange.never_train": 1,
        "rating.drop": 1,
    }
    assert await repo.curation.summary_since(datetime.now(UTC) + timedelta(minutes=1)) == {}


async def test_a_login_nonce_is_used_once(repo: Repository) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert not await repo.dashboard.login_nonce_used("abc")
    assert await repo.dashboard.use_login_nonce("abc", "telegram:1", later)
    assert not await repo.dashboard.use_login_nonce("abc", "telegram:1", later)
    assert await repo.dashboard.login_nonce_used("abc")
