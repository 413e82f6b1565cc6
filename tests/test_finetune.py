"""Fine-tuning orchestration: lock, registration, activation, failure and interruption.

The trainer here is a stand-in that writes an adapter folder; the real subprocess trainer and
the real model run in tests/test_loop.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.app import Core, build_core
from bot.config import Settings
from bot.finetune import NothingToTrain
from bot.generation import ScriptedGenerator
from bot.trainer_process import ProgressFn, TrainingFailed, TrainResult
from bot.types import AdapterStatus, Incoming, Reply, RunStatus, Vote
from storage.repository import TrainingAlreadyRunning

ME = Incoming("console", "local", "local", "Ann", "")


class FakeTrainer:
    """Writes the adapter folder the real trainer would, after reporting a few steps."""

    def __init__(self, *, fail: str | None = None, hold: asyncio.Event | None = None) -> None:
        self.fail = fail
        self.hold = hold
        self.specs: list[dict[str, Any]] = []

    async def run(self, spec: dict[str, Any], spec_path: Path, progress: ProgressFn) -> TrainResult:
        self.specs.append(json.loads(spec_path.read_text(encoding="utf-8")))
        await progress({"event": "start", "examples": 1, "total_steps": 2})
        partial = Path(spec["output_dir"] + ".partial")
        partial.mkdir(parents=True)
        await progress({"event": "step", "step": 1, "total_steps": 2, "loss": 2.5})
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            raise TrainingFailed(self.fail)
        await progress({"event": "step", "step": 2, "total_steps": 2, "loss": 1.5})
        (partial / "adapter_config.json").write_text("{}", encoding="utf-8")
        partial.rename(spec["output_dir"])
        await progress({"event": "done", "metrics": {"train_loss": 1.5, "steps": 2}})
        return TrainResult(Path(spec["output_dir"]), {"train_loss": 1.5, "steps": 2})


async def _core(settings: Settings, trainer: FakeTrainer) -> Core:
    return await build_core(
        settings,
        generator=ScriptedGenerator(),
        model_dir=Path("/m"),
        trainer=trainer,
        progress=False,
    )


async def _rated(core: Core, text: str, vote: Vote = Vote.UP) -> int:
    items = [i async for i in core.service.respond(replace(ME, text=text))]
    reply = items[-1]
    assert isinstance(reply, Reply) and reply.exchange_id is not None
    await core.service.rate(reply.exchange_id, ME.user_key, vote)
    return reply.exchange_id


async def test_a_run_registers_and_activates_a_version(settings: Settings) -> None:
    trainer = FakeTrainer()
    core = await _core(settings, trainer)
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    try:
        liked = await _rated(core, "good one")
        disliked = await _rated(core, "bad one", Vote.DOWN)
        started = await core.finetuner.start(
            trigger="command", requested_by="console:local", notify=notify
        )
        assert "on 1 liked of 2 rated replies" in started
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED
        assert outcome.version == 1 and core.versions.current == 1
        version = await core.repo.adapter_version(1)
        assert version is not None and version.status is AdapterStatus.ACTIVE
        assert set(version.exchange_ids) == {liked, disliked}
        assert version.parent is None and version.metrics["train_loss"] == 1.5
        spec = trainer.specs[0]
        assert spec["model_dir"] == "/m" and spec["lora"]["r"] == settings.lora.r
        rows = [json.loads(line) for line in Path(spec["dataset"]).read_text().splitlines()]
        assert {r["exchange_id"]: r["label"] for r in rows} == {liked: True, disliked: False}
        assert any("step 2/2 (100%), loss 1.500" in n for n in notes)
        assert "adapter v1 is live" in notes[-1]
        # The scripted generator now answers with the new adapter.
        items = [i async for i in core.service.respond(replace(ME, text="again"))]
        assert isinstance(items[-1], Reply) and "[v0001]" in items[-1].text
        assert items[-1].adapter_version == 1
        await _rated(core, "more")
        await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        second = await core.finetuner.wait()
        assert second is not None and second.version == 2
        parent = await core.repo.adapter_version(2)
        assert parent is not None and parent.parent == 1
    finally:
        await core.aclose()


async def test_nothing_to_train_and_no_overlap(settings: Settings) -> None:
    hold = asyncio.Event()
    core = await _core(settings, FakeTrainer(hold=hold))
    try:
        with pytest.raises(NothingToTrain, match="0 liked replies"):
            await core.finetuner.start(
                trigger="command", requested_by=None, notify=core.outbox.notifier("console:local")
            )
        await _rated(core, "x")
        await core.finetuner.start(
            trigger="command", requested_by=None, notify=core.outbox.notifier("console:local")
        )
        with pytest.raises(TrainingAlreadyRunning):
            await core.finetuner.start(
                trigger="command", requested_by=None, notify=core.outbox.notifier("console:local")
            )
        # Chat stays usable while training runs.
        items = [i async for i in core.service.respond(replace(ME, text="still there?"))]
        assert isinstance(items[-1], Reply) and items[-1].rateable
        hold.set()
        await core.finetuner.wait()
    finally:
        await core.aclose()


async def test_a_failed_run_activates_nothing(settings: Settings) -> None:
    core = await _core(settings, FakeTrainer(fail="CUDA exploded"))
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    try:
        await _rated(core, "x")
        await core.finetuner.start(trigger="command", requested_by=None, notify=notify)
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.FAILED
        assert "CUDA exploded" in notes[-1]
        assert await core.repo.adapter_versions() == []
        assert core.versions.current is None
        assert not list(settings.adapters_dir.glob("*.partial"))
        runs = await core.repo.training_runs()
        assert runs[0].status is RunStatus.FAILED
    finally:
        await core.aclose()


async def test_stopping_mid_run_leaves_nothing_partial(settings: Settings) -> None:
    core = await _core(settings, FakeTrainer(hold=asyncio.Event()))
    try:
        await _rated(core, "x")
        await core.finetuner.start(
            trigger="command", requested_by=None, notify=core.outbox.notifier("console:local")
        )
        await asyncio.sleep(0.05)
        await core.finetuner.cancel()
        runs = await core.repo.training_runs()
        assert runs[0].status is RunStatus.INTERRUPTED
        assert await core.repo.adapter_versions() == []
        assert not any(settings.adapters_dir.iterdir())
    finally:
        await core.aclose()


async def test_rollback_and_activate(settings: Settings) -> None:
    core = await _core(settings, FakeTrainer())
    try:
        await _rated(core, "x")
        for _ in range(2):
            await core.finetuner.run(
                trigger="cli", requested_by=None, notify=core.outbox.notifier("console:local")
            )
        assert core.versions.current == 2
        items = [i async for i in core.service.respond(replace(ME, text="/rollback"))]
        assert isinstance(items[-1], Reply) and "adapter v1" in items[-1].text
        assert core.versions.current == 1
        items = [i async for i in core.service.respond(replace(ME, text="/rollback"))]
        assert isinstance(items[-1], Reply) and "base model" in items[-1].text
        items = [i async for i in core.service.respond(replace(ME, text="/activate 2"))]
        assert core.versions.current == 2
        items = [i async for i in core.service.respond(replace(ME, text="/adapters"))]
        assert isinstance(items[-1], Reply)
        assert "▶ v2 [active]" in items[-1].text and "parent v1" in items[-1].text
        items = [i async for i in core.service.respond(replace(ME, text="/rollback 0"))]
        assert core.versions.current is None
    finally:
        await core.aclose()
