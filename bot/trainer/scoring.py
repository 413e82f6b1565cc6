"""Scoring the held-out slice under the base model, the adapter serving now and the candidate.

The trainer has the model loaded, so it evaluates too: the base and the serving adapter before
training (a broken serving adapter shows up before any time is spent), the candidate after.
The serving adapter is loaded next to the one being trained and removed again, so the saved
candidate holds only its own weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import TrainingError
from bot.learning.evaluation import Evaluation, RowScore, metrics
from bot.trainer.examples import Example
from bot.trainer.loop import Runtime, score
from bot.trainer.visible import VisibleCheck

SERVING = "serving"  # peft's name for the serving LoRA while it is evaluated
Scores = list[tuple[float, int]]


@dataclass(frozen=True)
class Baseline:
    """Held-out scores before training: under the base and under the serving LoRA."""

    base: Scores
    serving: Scores


def baseline(
    model: Any,
    heldout: Sequence[Example],
    rt: Runtime,
    serving: Path | None,
    check: VisibleCheck | None = None,
) -> Baseline:
    """Scores of the base model and of the LoRA serving now (the base if none); ``check``
    takes the held-out rows' features from the base pass, the base's replies to its general
    prompts and the serving LoRA's sampled replies."""
    with model.disable_adapter():
        base = score(model, heldout, rt, check.heldout if check is not None else None)
        if check is not None:
            check.base(model)
            if serving is None:
                check.serving(model, heldout)
    if serving is None:
        return Baseline(base, base)
    try:
        model.load_adapter(str(serving), adapter_name=SERVING)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"cannot load the serving adapter {serving}: {exc}") from None
    model.set_adapter(SERVING)
    try:
        served = score(model, heldout, rt)
        if check is not None:
            check.serving(model, heldout)
    finally:
        model.set_adapter("default")  # the adapter being trained, trainable again
        model.delete_adapter(SERVING)
    return Baseline(base, served)


def evaluation(
    heldout: Sequence[Example], before: Baseline, candidate: Scores, beta: float
) -> Evaluation:
    """Metrics of base, serving and candidate on the held-out slice, and the slice's size."""

    def rows(scores: Scores) -> list[RowScore]:
        return [
            RowScore(ex.label, logp, tokens, base_logp)
            for ex, (logp, tokens), (base_logp, _) in zip(heldout, scores, before.base, strict=True)
        ]

    liked = sum(1 for ex in heldout if ex.label)
    return Evaluation(
        base=metrics(rows(before.base), beta),
        serving=metrics(rows(before.serving), beta),
        candidate=metrics(rows(candidate), beta),
        liked=liked,
        disliked=len(heldout) - liked,
    )
