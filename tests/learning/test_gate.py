"""The gate on real training (the tiny model, the trainer subprocess): honest ratings give a
candidate that goes live; poisoned ratings (labels inverted) give one the gate rejects.

Users chat through the ChatService and like long, friendly answers and dislike curt ones. The
poisoner inverts the ratings the next run trains on; the held-out ratings stay honest, which is
the gate's premise (held-out rows are chosen by a hash the poisoner does not control).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from bot.app import Core, build_core
from bot.generation import ScriptedGenerator
from bot.learning.curation import content_key, is_heldout
from bot.settings import Settings
from bot.types import AdapterStatus, Incoming, RunStatus, Turn, Vote
from tests.support.records import say

LIKED = "The sea is calm and blue, and the boat is in the harbour."
DISLIKED = "No."
ME = Incoming("console", "local", "local", "Ann", "")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def _reply(turns: Sequence[Turn], _adapter: Path | None) -> str:
    number = int(turns[-1].content.rsplit(" ", 1)[-1])
    return LIKED if number % 2 == 0 else DISLIKED


def _settings(settings: Settings, model_dir: Path) -> Settings:
    return settings.model_copy(
        update={
            "training": settings.training.model_copy(
                update={
                    "epochs": 3.0,
                    "learning_rate": 3e-2,
                    "batch_size": 8,
                    "max_length": 64,
                    "nice": 0,
                }
            ),
            # The log-probability gate alone: the tiny model's replies are not language, so the
            # look at what it writes (tests/trainer/test_kto.py) would judge noise here.
            "gate": settings.gate.model_copy(
                update={
                    "heldout_fraction": 0.3,
                    "min_heldout": 4,
                    "sample_prompts": 0,
                    "general_prompts": [],
                }
            ),
        }
    )


async def _chat_and_rate(core: Core, count: int) -> None:
    for i in range(count):
        who = replace(ME, chat_id=f"chat{i}", user_id=f"user{i % 8}")
        reply = await say(core, who, f"Tell me about {i}")
        assert reply.exchange_id is not None
        vote = Vote.UP if reply.text == LIKED else Vote.DOWN
        await core.service.rate(reply.exchange_id, who.user_key, vote)


async def _poison_training_rows(core: Core) -> int:
    """Invert every rating outside the held-out pool (a second press of the other button)."""
    fraction = core.settings.gate.heldout_fraction
    flipped = 0
    for rated in await core.repo.training.rated():
        if not is_heldout(content_key(rated), fraction):
            inverted = Vote.DOWN if rated.label else Vote.UP
            await core.service.rate(rated.exchange_id, rated.user_key, inverted)
            flipped += 1
    return flipped


async def test_poisoned_ratings_give_a_candidate_the_gate_rejects(
    settings: Settings, tiny_model_dir: Path
) -> None:
    settings = _settings(settings, tiny_model_dir)
    core = await build_core(
        settings, generator=ScriptedGenerator(_reply), model_dir=tiny_model_dir, progress=False
    )
    notes: list[str] = []

    async def notify(text: str) -> None:
        notes.append(text)

    try:
        await _chat_and_rate(core, 32)
        honest = await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)
        assert honest.status is RunStatus.SUCCEEDED, honest.message
        assert honest.decision is not None and honest.decision.verdict == "pass"
        assert core.versions.current == 1 and "is live" in notes[-1]
        good = honest.metrics["preference_accuracy"]
        assert good >= 0.9  # it learned the taste

        assert await _poison_training_rows(core) > 15
        poisoned = await core.finetuner.run(trigger="cli", requested_by=None, notify=notify)

        assert poisoned.status is RunStatus.REJECTED, poisoned.message
        assert poisoned.decision is not None and poisoned.decision.verdict == "fail"
        assert poisoned.metrics["preference_accuracy"] < good - 0.5
        assert poisoned.metrics["serving.preference_accuracy"] == pytest.approx(good)
        assert "rejected by the gate" in notes[-1] and "reward margin" in notes[-1]
        assert poisoned.metrics["reward_margin"] < 0 < poisoned.metrics["serving.reward_margin"]
        assert core.versions.current == 1  # still serving the honest adapter
        rejected = await core.repo.adapters.get(2)
        assert rejected is not None and rejected.status is AdapterStatus.REJECTED
        gate = rejected.hyperparams["gate"]
        assert rejected.parent == 1 and isinstance(gate, dict) and gate["verdict"] == "fail"
        assert Path(rejected.path).is_dir()  # kept, with its numbers, for an admin to inspect
    finally:
        await core.aclose()
