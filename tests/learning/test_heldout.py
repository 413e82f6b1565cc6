"""A young bot's gate: a held-out floor that grows with the data, how many more ratings the gate
needs, and the first /finetune of a young bot going live through the gate; a /finetune with no
new ratings does nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.app import Core
from bot.errors import NothingToTrain
from bot.learning.curation import curate
from bot.learning.heldout import heldout_needed, is_young, ratings_to_judge
from bot.settings import GateSettings, Settings, TrainingSettings
from bot.types import AdapterStatus, Incoming, RunStatus, Vote
from tests.learning.test_curation import rated
from tests.support.records import rated as rate_reply
from tests.support.trainers import GOOD, FakeTrainer, trainer_core

DEFAULT = GateSettings()  # fraction 0.2, min_heldout 8, floor 2
ME = Incoming("console", "local", "local", "Ann", "")


def test_the_floor_grows_with_the_data_up_to_min_heldout() -> None:
    assert [heldout_needed(n, DEFAULT) for n in (4, 10, 11, 20, 35, 39)] == [2, 2, 3, 4, 7, 8]
    assert not is_young(40, DEFAULT) and heldout_needed(40, DEFAULT) == 8
    off = GateSettings(heldout_floor=0)
    assert not is_young(6, off) and heldout_needed(6, off) == 8


def test_a_young_bot_holds_out_a_small_slice_and_the_gate_can_judge() -> None:
    rows = [rated(i, label=i % 3 != 0) for i in range(6)]
    curated = curate(rows, TrainingSettings(), DEFAULT)
    assert len(curated.heldout) == 2 and len(curated.train) == 4
    assert curated.min_heldout == 2 and curated.to_judge is None
    trained = {i for r in curated.train for i in r.exchange_ids}
    assert not trained & {i for r in curated.heldout for i in r.exchange_ids}
    assert all(r.split == "heldout" for r in curated.heldout)
    again = curate(list(reversed(rows)), TrainingSettings(), DEFAULT)
    assert {r.key for r in again.heldout} == {r.key for r in curated.heldout}  # stable


def test_too_few_ratings_train_on_all_and_say_how_many_more_the_gate_needs() -> None:
    curated = curate([rated(i) for i in range(3)], TrainingSettings(), DEFAULT)
    assert curated.heldout == [] and len(curated.train) == 3
    assert curated.to_judge == 1
    assert "about 1 more rated reply" in curated.gate_note()
    # The serving adapter saw them all: new ones must make up the whole slice.
    seen = curate([rated(i) for i in range(3)], TrainingSettings(), DEFAULT, range(3))
    assert seen.heldout == [] and seen.to_judge == 2
    # Without the young floor the hash pool must reach min_heldout: ~40 rows at 20 %.
    classic = GateSettings(heldout_floor=0)
    assert ratings_to_judge(3, 3, classic) == 37
    assert ratings_to_judge(3, 3, GateSettings(enabled=False)) is None


def test_rows_the_serving_adapter_saw_are_never_the_young_slice() -> None:
    rows = [rated(i) for i in range(8)]
    first = curate(rows, TrainingSettings(), DEFAULT)
    seen = {i for r in first.heldout for i in r.exchange_ids}
    second = curate(rows, TrainingSettings(), DEFAULT, seen)
    assert len(second.heldout) == 2 and not seen & {
        i for r in second.heldout for i in r.exchange_ids
    }


async def _six_ratings(core: Core) -> None:
    for i in range(6):
        who = replace(ME, chat_id=f"chat{i}", user_id=f"user{i}")  # under the rate limit
        await rate_reply(core, who, f"message {i}", Vote.UP if i % 3 else Vote.DOWN)


async def test_a_young_bots_first_finetune_goes_live_through_the_gate(settings: Settings) -> None:
    trainer = FakeTrainer(candidate=GOOD)
    core = await trainer_core(settings, trainer)
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    try:
        await _six_ratings(core)
        outcome = await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert outcome.status is RunStatus.SUCCEEDED and core.versions.current == 1
        assert outcome.decision is not None and outcome.decision.verdict == "pass"
        assert "on 2 held-out ratings" in notes[-1] and "is live" in notes[-1]
        assert len([r for r in trainer.datasets[0] if r["split"] == "heldout"]) == 2
    finally:
        await core.aclose()


async def test_an_unjudged_run_says_how_many_more_ratings_the_gate_needs(
    settings: Settings,
) -> None:
    core = await trainer_core(settings, FakeTrainer(candidate=GOOD))
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    try:
        await rate_reply(core, ME, "only one")
        started = await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        assert "The gate can judge a run once there are about 3 more rated replies" in started
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
        version = await core.repo.adapters.get(1)
        assert version is not None and version.status is AdapterStatus.READY
        assert "trained, not yet proven" in notes[-1] and "/activate 1 tries it" in notes[-1]
        assert "about 3 more rated replies" in notes[-1]
    finally:
        await core.aclose()


async def test_a_second_finetune_with_no_new_ratings_does_nothing(settings: Settings) -> None:
    core = await trainer_core(settings, FakeTrainer())

    async def notify(_text: str) -> None:
        pass

    try:
        exchange = await rate_reply(core, ME, "hello")
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        with pytest.raises(NothingToTrain, match=r"No new ratings since run #1 trained v1"):
            await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        assert [r.id for r in await core.repo.runs.recent()] == [1]  # no run was started
        assert len(await core.repo.adapters.all()) == 1
        assert await rate_reply(core, ME, "something new") != exchange
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert len(await core.repo.adapters.all()) == 2
    finally:
        await core.aclose()


async def test_a_changed_vote_is_something_new(settings: Settings) -> None:
    kto = settings.model_copy(update={"training": TrainingSettings(method="kto")})
    core = await trainer_core(kto, FakeTrainer())

    async def notify(_text: str) -> None:
        pass

    try:
        exchange = await rate_reply(core, ME, "hello")
        await rate_reply(core, ME, "other", Vote.DOWN)
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        with pytest.raises(NothingToTrain, match="No new ratings"):
            await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        await core.service.rate(exchange, ME.user_key, Vote.DOWN)  # 👍 → 👎: same exchanges
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert len(await core.repo.adapters.all()) == 2
    finally:
        await core.aclose()


async def test_a_curation_since_the_last_run_is_something_new(settings: Settings) -> None:
    """A flip on the dashboard keeps the rating's time (it is not a new vote for the
    scheduler) but changes a label: a /finetune after it trains, it does not refuse."""
    kto = settings.model_copy(update={"training": TrainingSettings(method="kto")})
    core = await trainer_core(kto, FakeTrainer())

    async def notify(_text: str) -> None:
        pass

    try:
        await rate_reply(core, ME, "hello")
        await rate_reply(core, ME, "other", Vote.DOWN)
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert await core.repo.curation.flip_rating(1, "admin:1") == -1  # 👍 → 👎: same exchanges
        await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert len(await core.repo.adapters.all()) == 2
    finally:
        await core.aclose()
