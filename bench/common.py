"""Pieces the platform benchmarks share: the prompts and how latencies are summarised."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.repository import Repository


def tried_settings() -> dict[str, str]:
    """``SELFTUNE_TRAINING__*``, ``SELFTUNE_GATE__*`` and ``SELFTUNE_LORA__*`` from the
    environment: a learning bench tries other settings with them (load_settings' overrides)."""
    tried = ("SELFTUNE_TRAINING__", "SELFTUNE_GATE__", "SELFTUNE_LORA__")
    return {k: v for k, v in os.environ.items() if k.startswith(tried)}


PROMPTS = (
    "Hello! How are you today?",
    "What is a good name for a black cat?",
    "Give me one tip for sleeping better.",
    "Why is the sky blue? Keep it short.",
    "Suggest a quick vegetarian dinner.",
    "What is the capital of France?",
    "Write a two-line poem about rain.",
    "How do I boil an egg?",
)


# The serving and startup benchmarks' first messages (the serving chats follow up on them).
QUESTIONS = (
    "Tell me about the sea.",
    "Hello! How are you today?",
    "Write a short poem about a boat.",
    "What is the capital of France?",
    "Explain photosynthesis to a child.",
    "Give me three tips for sleeping well.",
    "Why is the sky blue?",
    "Describe a rainy morning in a city.",
    "What should I cook tonight?",
    "How do airplanes stay in the air?",
    "Tell me a fun fact about octopuses.",
    "What is a good name for a cat?",
)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def percentiles(values: list[float]) -> str:
    """'p50 x s, p95 y s', or 'n/a' when there is nothing to summarise."""
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"p50 {statistics.median(ordered):.2f} s, p95 {percentile(ordered, 0.95):.2f} s"


@dataclass(frozen=True)
class Timing:
    """How long one message took on a platform, in seconds after it was sent."""

    first_text_s: float | None  # None: no text appeared
    final_s: float | None  # None: never finished
    after_first_piece_s: float | None = None  # first visible text − the model's first piece
    after_last_piece_s: float | None = None  # final reply − the model's last piece


def report(label: str, timings: list[Timing], *, model_pieces: bool = False) -> None:
    """Print the timings' percentiles on one line; with ``model_pieces``, on three, each also
    measured from the model's own first and last piece of text."""

    def values(name: str) -> list[float]:
        return [v for t in timings if (v := getattr(t, name)) is not None]

    first, final = percentiles(values("first_text_s")), percentiles(values("final_s"))
    if not model_pieces:
        print(f"{label}: first visible text {first}; final reply {final}")
        return
    print(
        f"{label}:\n  first visible text {first} "
        f"(after the model's first piece: {percentiles(values('after_first_piece_s'))})\n"
        f"  final reply {final} "
        f"(after the model's last piece: {percentiles(values('after_last_piece_s'))})"
    )


async def stored_pairs(repo: Repository, chat_keys: Iterable[str]) -> int:
    """How many of these chats hold exactly a question and its answer, as one message each."""
    stored = 0
    for key in chat_keys:
        history = await repo.history(key, 4)
        stored += [m.role for m in history] == ["user", "assistant"]
    return stored
