"""A run hands the trainer the preference pairs (``TrainingSpec.pairs_dataset``, TRL's
preference format) next to the rated rows, and deletes the file afterwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bot.learning.protocol import TrainingSpec, TrainResult
from bot.learning.trainer_process import ProgressFn
from bot.settings import Settings
from bot.types import Incoming, Vote
from tests.support.records import rated, say
from tests.support.trainers import FakeTrainer, trainer_core

ME = Incoming("console", "local", "local", "Ann", "")


class PairsTrainer(FakeTrainer):
    """The FakeTrainer, also reading the pairs file it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[list[dict[str, Any]] | None] = []

    async def run(self, spec: TrainingSpec, spec_path: Path, progress: ProgressFn) -> TrainResult:
        path = spec.pairs_dataset
        lines = path.read_text(encoding="utf-8").splitlines() if path is not None else None
        self.pairs.append([json.loads(line) for line in lines] if lines is not None else None)
        return await super().run(spec, spec_path, progress)


async def _notify(_text: str) -> None:
    return None


async def test_a_run_trains_on_the_pairs_too(settings: Settings) -> None:
    trainer = PairsTrainer()
    core = await trainer_core(settings, trainer)
    try:
        for i in range(settings.training.min_examples + 1):
            await rated(core, ME, f"question {i}", Vote.DOWN if i % 2 else Vote.UP)
        await say(core, ME, "Capital of France?")
        await say(core, ME, "/better Paris")
        outcome = await core.finetuner.run(trigger="test", requested_by=None, notify=_notify)
        assert outcome.version is not None
        version = await core.repo.adapters.get(outcome.version)
    finally:
        await core.aclose()
    [pairs] = trainer.pairs
    assert pairs is not None
    [row] = pairs
    assert row["chosen"] == [{"role": "assistant", "content": "Paris"}]
    assert row["rejected"] == [{"role": "assistant", "content": "You said: Capital of France?"}]
    assert row["prompt"][-1] == {"role": "user", "content": "Capital of France?"}
    assert row["users"] == [ME.user_key] and row["split"] == "train"
    [spec] = trainer.specs
    assert spec.pairs_dataset is not None and spec.pairs_dataset.name == "pairs.jsonl"
    assert version is not None
    assert {row["chosen_exchange_id"], row["rejected_exchange_id"]} <= set(version.exchange_ids)
    assert not spec.pairs_dataset.exists()  # users' words are not left lying around


async def test_no_pairs_no_pairs_file(settings: Settings) -> None:
    trainer = PairsTrainer()
    core = await trainer_core(settings, trainer)
    try:
        for i in range(settings.training.min_examples + 1):
            await rated(core, ME, f"question {i}", Vote.DOWN if i % 2 else Vote.UP)
        await core.finetuner.run(trigger="test", requested_by=None, notify=_notify)
    finally:
        await core.aclose()
    assert trainer.pairs == [None] and trainer.specs[0].pairs_dataset is None
