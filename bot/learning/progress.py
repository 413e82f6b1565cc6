"""Trainer events → progress for whoever asked: chat messages, sparingly; every event to a
terminal progress bar (``selftune train``) through ``on_event``."""

from __future__ import annotations

import time
from typing import Any, Protocol

from bot.learning.trainer_process import ProgressFn
from bot.outbox import Notify

_PHASES = {
    "reference": "scoring the {examples} examples under the base model (KTO's reference)…",
    "baseline": "scoring {heldout} held-out ratings under the base and the serving adapter…",
    "evaluation": "training done; scoring the new adapter on {heldout} held-out ratings…",
}


class HasProgress(Protocol):
    progress: dict[str, Any]


def reporter(
    owner: HasProgress, notify: Notify, on_event: ProgressFn | None, run_id: int
) -> ProgressFn:
    """A ProgressFn that keeps ``owner.progress`` current (for /status) and tells the admin
    enough to see it move without flooding a chat: phases, and steps every 25 % or 60 s."""
    last = {"at": 0.0, "pct": -100.0}

    async def report(event: dict[str, Any]) -> None:
        owner.progress = event
        if on_event is not None:
            await on_event(event)
        kind = event.get("event")
        if kind == "phase" and event.get("phase") in _PHASES:
            text = _PHASES[str(event["phase"])].format_map(_Missing(event))
            await notify(f"Training run #{run_id}: {text}")
            return
        if kind != "step":
            return
        step, total = int(event.get("step", 0)), max(1, int(event.get("total_steps", 1)))
        pct, now = 100.0 * step / total, time.monotonic()
        if step == total or pct - last["pct"] >= 25 or now - last["at"] >= 60:
            last.update(at=now, pct=pct)
            loss = event.get("loss")
            loss_text = f", loss {loss:.3f}" if isinstance(loss, int | float) else ""
            await notify(f"Training: step {step}/{total} ({pct:.0f}%){loss_text}")

    return report


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"
