"""Pieces the platform benchmarks share: the prompts and how latencies are summarised."""

from __future__ import annotations

import statistics

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
