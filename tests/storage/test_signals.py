"""Regenerations, corrections, reaction votes and preference pairs in the repository, on
SQLite and on PostgreSQL."""

from __future__ import annotations

from bot.types import RateAction, Turn, Vote
from storage.repository import Repository

PROMPT = (Turn("system", "Be brief."), Turn("user", "Capital of France?"))
CHAT = "telegram:-100:5"  # a forum topic


async def _answered(repo: Repository, text: str = "Lyon") -> int:
    message = await repo.add_user_message(CHAT, "telegram:7", "Bob", "Capital?", "10")
    exchange = await repo.start_exchange(CHAT, "telegram:7", message, PROMPT, 1, "m", {})
    await repo.finish_exchange(exchange, text)
    await repo.set_reply_platform_id(exchange, "55")
    return exchange


async def _regenerated(repo: Repository, first: int, text: str) -> int:
    again = await repo.signals.start_regeneration(first, 2, "m", {"temperature": 0.7})
    await repo.signals.finish_regeneration(again, text, 2, replaces=first)
    return again


async def test_another_reply_takes_the_message_and_links_to_the_first(repo: Repository) -> None:
    first = await _answered(repo)
    second = await _regenerated(repo, first, "Paris")
    third = await _regenerated(repo, first, "Marseille")  # an old reply's button: still works
    assert await repo.signals.exchange_for_message(CHAT, "55") == third
    # Telegram's reactions name the chat, not the topic.
    assert await repo.signals.exchange_for_message("telegram:-100", "55") == third
    assert await repo.signals.exchange_for_message("telegram:-1000", "55") is None
    assert [m.content for m in await repo.history(CHAT, 10)] == ["Capital?", "Marseille"]
    exchange = await repo.exchange(second)
    assert exchange is not None and exchange.prompt == PROMPT and exchange.adapter_version == 2
    counts = await repo.signals.counts()
    assert (counts.regenerations, counts.corrections) == (2, 0)


async def test_votes_among_alternatives_are_pairs(repo: Repository) -> None:
    first = await _answered(repo)
    second = await _regenerated(repo, first, "Paris")
    await repo.rate(second, "telegram:8", Vote.UP)
    await repo.set_vote(first, "telegram:9", Vote.DOWN, source="reaction")
    pairs = await repo.training.pairs()
    assert {(p.user_key, p.chosen.exchange_id, p.rejected.exchange_id) for p in pairs} == {
        ("telegram:8", second, first),
        ("telegram:9", second, first),
    }
    assert {p.chosen.adapter_version for p in pairs} == {2}
    assert {p.rejected.adapter_version for p in pairs} == {1}
    assert all(p.prompt == PROMPT for p in pairs)
    assert (await repo.signals.counts()).votes_by_source == {"button": 1, "reaction": 1}
    await repo.set_training_opt_out("telegram:9", True)
    assert [p.user_key for p in await repo.training.pairs()] == ["telegram:8"]


async def test_set_vote_replaces_and_withdraws(repo: Repository) -> None:
    first = await _answered(repo)
    stored = await repo.set_vote(first, "telegram:8", Vote.UP, source="reaction")
    assert stored.action is RateAction.STORED and (stored.ups, stored.downs) == (1, 0)
    changed = await repo.set_vote(first, "telegram:8", Vote.DOWN, source="reaction")
    assert changed.action is RateAction.CHANGED and changed.current is Vote.DOWN
    again = await repo.set_vote(first, "telegram:8", Vote.DOWN, source="reaction")
    assert again.action is RateAction.STORED  # the same vote again stays (unlike a button)
    gone = await repo.set_vote(first, "telegram:8", None, source="reaction")
    assert gone.action is RateAction.RETRACTED and await repo.user_vote(first, "telegram:8") is None


async def test_a_correction_is_liked_by_its_writer_and_forgotten_with_them(
    repo: Repository,
) -> None:
    first = await _answered(repo)
    fixed = await repo.signals.correct(first, "telegram:8", "Paris")
    [liked] = await repo.training.rated()
    assert (liked.exchange_id, liked.completion, liked.label) == (fixed, "Paris", True)
    assert liked.prompt == PROMPT and liked.adapter_version == 1
    [pair] = await repo.training.pairs()
    assert (pair.chosen.exchange_id, pair.rejected.exchange_id) == (fixed, first)
    assert await repo.last_exchange_id(CHAT) == first
    report = await repo.forget_user("telegram:8")
    assert (report.exchanges, report.ratings) == (1, 1)
    assert await repo.training.pairs() == [] and await repo.exchange(first) is not None


async def test_forgetting_the_author_takes_every_alternative(repo: Repository) -> None:
    first = await _answered(repo)
    await _regenerated(repo, first, "Paris")
    await repo.signals.correct(first, "telegram:8", "Paris!")
    report = await repo.forget_user("telegram:7")
    assert report.exchanges == 3
    assert await repo.training.rated() == [] and await repo.training.pairs() == []
