"""Training by schedule: every N hours, after M new ratings, never two at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bot.app import Core
from bot.learning.schedule import Scheduler
from bot.outbox import Outbox
from bot.settings import ScheduleSettings, Settings
from bot.types import Incoming, RunStatus
from tests.support.records import rated
from tests.support.trainers import FakeTrainer, trainer_core

ME = Incoming("console", "local", "local", "Ann", "")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def _rate(core: Core, count: int) -> None:
    for i in range(count):
        who = replace(ME, chat_id=f"c{i}", user_id=f"u{i}")
        await rated(core, who, f"hi {i}")


def _scheduler(core: Core, clock: Clock, outbox: Outbox, **settings: object) -> Scheduler:
    config = ScheduleSettings.model_validate({"notify_chats": ["console:local"], **settings})
    return Scheduler(config, core.repo, core.finetuner, outbox, clock)


async def test_after_m_new_ratings(settings: Settings) -> None:
    core = await trainer_core(settings, FakeTrainer(), progress=True)
    outbox, sent = Outbox(), []

    async def send(chat_key: str, text: str) -> None:
        sent.append((chat_key, text))

    outbox.register("console", send)
    scheduler = _scheduler(core, Clock(), outbox, after_ratings=3)
    try:
        await _rate(core, 2)
        assert await scheduler.tick() is None
        await _rate(core, 1)
        assert await scheduler.tick() is not None
        await core.finetuner.wait()
        runs = await core.repo.runs.recent()
        assert [(r.trigger, r.status) for r in runs] == [("schedule", RunStatus.SUCCEEDED)]
        assert any("Scheduled (3 new ratings" in text for _, text in sent)
        assert await scheduler.tick() is None  # counting starts again after the run
        await _rate(core, 3)
        assert await scheduler.tick() is not None
        await core.finetuner.wait()
    finally:
        await core.aclose()


async def test_every_n_hours_and_nothing_to_train(settings: Settings) -> None:
    core = await trainer_core(settings, FakeTrainer(), progress=True)
    clock = Clock()
    scheduler = _scheduler(core, clock, Outbox(), every_hours=2)
    try:
        assert await scheduler.tick() is None
        clock.now += timedelta(hours=2)
        skipped = await scheduler.tick()
        assert skipped is not None and skipped.startswith("skipped: Nothing to fine-tune")
        assert await scheduler.tick() is None  # not retried every minute
        await _rate(core, 1)
        clock.now += timedelta(hours=2, seconds=1)
        assert await scheduler.tick() is not None
        await core.finetuner.wait()
    finally:
        await core.aclose()


async def test_never_two_at_once_and_the_task_stops(settings: Settings) -> None:
    hold = asyncio.Event()
    core = await trainer_core(settings, FakeTrainer(hold=hold), progress=True)
    scheduler = _scheduler(core, Clock(), Outbox(), after_ratings=1, check_interval_s=0.01)
    try:
        await _rate(core, 2)
        await core.finetuner.start(trigger="command", requested_by=None, notify=_quiet)
        assert await scheduler.tick() is None  # the admin's run holds the lock
        scheduler.start()
        await asyncio.sleep(0.05)
        await scheduler.stop()
        hold.set()
        await core.finetuner.wait()
        assert len(await core.repo.runs.recent()) == 1
    finally:
        await core.aclose()


async def test_off_by_default(core: Core) -> None:
    assert core.scheduler is not None and not core.scheduler.enabled
    core.scheduler.start()  # a no-op
    await core.scheduler.stop()


async def _quiet(_text: str) -> None:
    return None
