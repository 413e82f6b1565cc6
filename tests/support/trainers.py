"""A stand-in for the trainer subprocess, and the cores built around it, for the tests of
fine-tuning: the real trainer and the tiny model run in tests/e2e/test_loop.py and
tests/learning/test_gate.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bot.app import Core, build_core
from bot.errors import TrainingFailed
from bot.generation import ScriptedGenerator
from bot.learning.evaluation import Evaluation
from bot.learning.protocol import Done, Start, Step, TrainingSpec, TrainResult
from bot.learning.trainer_process import ProgressFn
from bot.settings import Settings
from bot.types import Incoming, Vote
from tests.support.records import rated

GOOD = {"preference_accuracy": 0.8, "liked_nll": 2.0, "reward_margin": 0.3}
BASE = {"preference_accuracy": 0.6, "liked_nll": 2.1, "reward_margin": 0.0}  # the base scores 0


class FakeTrainer:
    """Writes the adapter folder the real trainer would, after reporting a few steps; its
    held-out evaluation says the candidate scores ``candidate`` (the serving adapter GOOD)."""

    def __init__(
        self,
        *,
        fail: str | None = None,
        hold: asyncio.Event | None = None,
        candidate: dict[str, float] | None = None,
    ) -> None:
        self.fail = fail
        self.hold = hold
        self.candidate = candidate
        self.specs: list[TrainingSpec] = []  # as read back from each run's SPEC.json
        self.datasets: list[list[dict[str, Any]]] = []

    async def run(self, spec: TrainingSpec, spec_path: Path, progress: ProgressFn) -> TrainResult:
        self.specs.append(TrainingSpec.load(spec_path))
        rows = [json.loads(line) for line in spec.dataset.read_text().splitlines()]
        self.datasets.append(rows)
        await progress(Start(spec.method, examples=len(rows), total_steps=2))
        partial = spec.output_dir.with_name(spec.output_dir.name + ".partial")
        partial.mkdir(parents=True)
        await progress(Step(1, 2, loss=2.5))
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            raise TrainingFailed(self.fail)
        await progress(Step(2, 2, loss=1.5))
        (partial / "adapter_config.json").write_text("{}", encoding="utf-8")
        partial.rename(spec.output_dir)
        done = Done(
            {"train_loss": 1.5, "steps": 2.0},
            self._evaluation(rows),
            {"method": spec.method, "losses": [2.5, 1.5]},  # as bot/trainer/run.py sends them
        )
        await progress(done)
        return TrainResult.of(spec.output_dir, done)

    def _evaluation(self, rows: list[dict[str, Any]]) -> Evaluation | None:
        if self.candidate is None:
            return None
        heldout = [r for r in rows if r.get("split") == "heldout"]
        liked = sum(1 for r in heldout if r["label"])
        return Evaluation(BASE, GOOD, self.candidate, liked, len(heldout) - liked)


async def trainer_core(settings: Settings, trainer: FakeTrainer, *, progress: bool = False) -> Core:
    """The real core with a scripted model and ``trainer``; ``progress``: build_core's."""
    return await build_core(
        settings,
        generator=ScriptedGenerator(),
        model_dir=Path("/m"),
        trainer=trainer,
        progress=progress,
    )


async def trained_core(settings: Settings, platform: str, first_chat: int = 100) -> Core:
    """A core that can fine-tune (a fake trainer whose candidate passes the gate, which needs 4
    held-out examples) with 40 replies to train on, rated 👎 and 👍 in turn: users U0 to U39
    (ids from 100) on ``platform``, each in a private chat of its own (ids from ``first_chat``)."""
    gate = settings.gate.model_copy(update={"min_heldout": 4})
    core = await trainer_core(
        settings.model_copy(update={"gate": gate}),
        FakeTrainer(candidate=GOOD | {"reward_margin": 0.5}),
    )
    try:
        for i in range(40):
            who = Incoming(platform, f"{first_chat + i}", f"{100 + i}", f"U{i}", "")
            await rated(core, who, f"message {i}", Vote.UP if i % 2 else Vote.DOWN)
    except BaseException:
        await core.aclose()
        raise
    return core
