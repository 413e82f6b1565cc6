"""Trainer events → progress for whoever asked: chat messages, sparingly; every event to a
terminal progress bar (``selftune train``) through ``on_event``."""

from __future__ import annotations

import time
from typing import Protocol

from bot.learning.protocol import Event, Phase, Step
from bot.learning.trainer_process import ProgressFn
from bot.outbox import Notify

_PHASES = {
    "reference": "scoring the {examples} examples under the base model (KTO's reference)…",
    "baseline": "scoring {heldout} held-out ratings under the base and the serving adapter…",
    "evaluation": "training done; scoring the new adapter on {heldout} held-out ratings…",
    "samples": "sampling the new adapter's replies to held-out prompts for the gate…",
}


class HasProgress(Protocol):
    """Anything that shows the latest trainer event (the finetuner, for /status)."""

    progress: Event | None


def reporter(
    owner: HasProgress, notify: Notify, on_event: ProgressFn | None, run_id: int
) -> ProgressFn:
    """A ProgressFn that keeps ``owner.progress`` current (for /status) and tells the admin
    enough to see it move without flooding a chat: phases, and steps every 25 % or 60 s."""
    last = {"at": 0.0, "pct": -100.0}

    async def report(event: Event) -> None:
        owner.progress = event
        if on_event is not None:
            await on_event(event)
        if isinstance(event, Phase) and event.phase in _PHASES:
            await notify(f"Training run #{run_id}: {_phase_text(event)}")
            return
        if not isinstance(event, Step):
            return
        step, total = event.step, max(1, event.total_steps)
        pct, now = 100.0 * step / total, time.monotonic()
        if step == total or pct - last["pct"] >= 25 or now - last["at"] >= 60:
            last.update(at=now, pct=pct)
            await notify(f"Training: step {step}/{total} ({pct:.0f}%), loss {event.loss:.3f}")

    return report


def _phase_text(event: Phase) -> str:
    def count(value: int | None) -> str:
        return "?" if value is None else str(value)

    return _PHASES[event.phase].format(examples=count(event.examples), heldout=count(event.heldout))
