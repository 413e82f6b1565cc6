"""The learning loop on the real default model (SmolLM2-135M): rated replies → KTO in the trainer
subprocess → held-out evaluation of base, serving and candidate → the gate → the new adapter
serves. A few steps only: this checks the wiring on the real model, bench/taste.py the effect."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.app import build_core
from bot.settings import Settings
from bot.types import Incoming, Reply, RunStatus, Vote

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
]
ME = Incoming("console", "local", "local", "Ann", "")


async def test_kto_gate_and_swap_on_the_real_model(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "generation": settings.generation.model_copy(
                update={"temperature": 0.0, "max_new_tokens": 24}  # greedy: the same every run
            ),
            "chat": settings.chat.model_copy(update={"user_messages_per_minute": 0}),
            "training": settings.training.model_copy(
                update={"max_steps": 2, "max_length": 128, "kto_min_disliked": 4}
            ),
            "gate": settings.gate.model_copy(
                update={"heldout_fraction": 0.3, "min_heldout": 2, "when_undecided": "activate"}
            ),
        }
    )
    core = await build_core(settings, progress=False)
    try:
        for i in range(16):
            who = replace(ME, chat_id=f"c{i}", user_id=f"u{i}")
            items = [x async for x in core.service.respond(replace(who, text=f"Say hi, {i}!"))]
            reply = items[-1]
            assert isinstance(reply, Reply) and reply.exchange_id is not None
            # Half 👍, half 👎, whatever the replies say: both labels reach training and the
            # held-out slice, so KTO runs and every gate metric is computed.
            vote = Vote.UP if i % 2 == 0 else Vote.DOWN
            await core.service.rate(reply.exchange_id, who.user_key, vote)
        outcome = await core.finetuner.run(trigger="test", requested_by=None, notify=_quiet)
        assert outcome.status in (RunStatus.SUCCEEDED, RunStatus.REJECTED), outcome.message
        assert outcome.decision is not None
        assert "serving.liked_nll" in outcome.metrics and "liked_nll" in outcome.metrics
        if outcome.status is RunStatus.SUCCEEDED:
            assert core.versions.current == outcome.version
            items = [x async for x in core.service.respond(replace(ME, text="Hello!"))]
            assert isinstance(items[-1], Reply) and items[-1].adapter_version == outcome.version
    finally:
        await core.aclose()


async def _quiet(_text: str) -> None:
    return None
