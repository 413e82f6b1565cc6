"""Killing the trainer mid-run (a real subprocess, SIGKILL): serving goes on meanwhile, nothing
partial goes live, the run is marked failed with the reason, nothing is lost, and the next run
works (the lock was released)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from bot.app import Core
from bot.learning.protocol import Step
from bot.learning.trainer_process import SubprocessTrainer
from bot.outbox import Notify
from bot.settings import Settings
from bot.types import Incoming, Reply, RunStatus, Vote
from tests.support.records import say
from tests.support.tinymodel import tiny_core, tiny_settings

ME = Incoming("console", "local", "local", "Ann", "")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def _settings(settings: Settings, model_dir: Path, epochs: float) -> Settings:
    return tiny_settings(settings, model_dir, max_new_tokens=8, epochs=epochs, max_length=96)


async def _chat(core: Core, i: int, vote: Vote | None = Vote.UP) -> Reply:
    who = replace(ME, chat_id=f"chat{i}", user_id=f"user{i}")
    reply = await say(core, who, f"hello number {i}")
    assert reply.rateable, reply
    if vote is not None:
        assert reply.exchange_id is not None
        await core.service.rate(reply.exchange_id, who.user_key, vote)
    return reply


async def _wait_for_steps(core: Core, trainer: SubprocessTrainer) -> int:
    deadline = time.monotonic() + 120
    while not isinstance(core.finetuner.progress, Step):
        assert time.monotonic() < deadline, "the trainer never reported a step"
        assert core.finetuner.running, core.finetuner.progress
        await asyncio.sleep(0.05)
    assert trainer.pid is not None
    return trainer.pid


async def _assert_nothing_went_live(core: Core, settings: Settings) -> None:
    runs = await core.repo.runs.recent()
    assert runs[0].status is RunStatus.FAILED and await core.repo.runs.running() is None
    assert await core.repo.adapters.all() == []  # nothing registered
    assert core.versions.current is None  # nothing partial went live
    assert not any(settings.adapters_dir.iterdir())  # no .partial, no half adapter


async def _assert_a_fresh_start_trains_on_everything(
    settings: Settings, tiny_model_dir: Path, notify: Notify, during: Sequence[Reply]
) -> None:
    # A fresh start (a restart after the kill) trains on everything, the new ratings included.
    core = await tiny_core(_settings(settings, tiny_model_dir, epochs=1.0), SubprocessTrainer())
    try:
        retry = await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert retry.status is RunStatus.SUCCEEDED, retry.message
        version = await core.repo.adapters.get(1)
        assert version is not None
        # Every rating is used: trained on, or held out to judge it (a young bot's gate).
        work = settings.data_dir / "training" / f"run-{retry.run_id:04d}"
        held = json.loads((work / "report.json").read_text())["data"]["heldout_exchange_ids"]
        used = set(version.exchange_ids) | set(held)
        assert len(used) == 9 and {r.exchange_id for r in during} <= used
        assert core.versions.current == 1
    finally:
        await core.aclose()


async def test_killing_the_trainer_mid_run(settings: Settings, tiny_model_dir: Path) -> None:
    trainer = SubprocessTrainer(nice=10)
    core = await tiny_core(_settings(settings, tiny_model_dir, epochs=2000.0), trainer)
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    try:
        for i in range(6):
            await _chat(core, i)
        counts_before = await core.repo.stats.counts()
        await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        pid = await _wait_for_steps(core, trainer)

        # Serving goes on while the trainer trains; ratings given now are kept for later.
        during = [await _chat(core, 100 + i) for i in range(3)]
        assert core.finetuner.running
        os.kill(pid, signal.SIGKILL)
        outcome = await asyncio.wait_for(core.finetuner.wait(), 60)

        assert outcome is not None and outcome.status is RunStatus.FAILED
        assert "killed by signal 9" in outcome.message and "Nothing changed" in notes[-1]
        await _assert_nothing_went_live(core, settings)
        counts = await core.repo.stats.counts()
        assert counts.ups == counts_before.ups + len(during)  # nothing lost
        assert counts.exchanges == counts_before.exchanges + len(during)
        assert all(r.adapter_version is None for r in during)
    finally:
        await core.aclose()

    await _assert_a_fresh_start_trains_on_everything(settings, tiny_model_dir, notify, during)
