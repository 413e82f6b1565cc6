"""History → prompt turns that fit the model's context window, dropping the oldest by tokens."""

from __future__ import annotations

from collections.abc import Sequence

from bot.errors import PromptTooLong
from bot.generation import Generator
from bot.types import HistoryMessage, Turn


def to_turns(history: Sequence[HistoryMessage], *, group: bool) -> list[Turn]:
    """Stored messages as chat turns; in groups each user turn says who spoke."""
    turns = []
    for message in history:
        content = message.content
        if group and message.role == "user" and message.user_name:
            content = f"{message.user_name}: {content}"
        turns.append(Turn(role=message.role, content=content))
    return turns


async def fit_prompt(
    system: str, turns: Sequence[Turn], generator: Generator, budget: int
) -> list[Turn]:
    """The system turn plus the longest suffix of ``turns`` whose rendered prompt has at most
    ``budget`` tokens (counted with the model's own chat template, never by characters).

    The suffix starts at a user turn, so the model never sees a reply without its question.
    """
    head = [Turn("system", system)] if system else []
    starts = [i for i, t in enumerate(turns) if t.role == "user"] or [len(turns) - 1]

    async def fits(start: int) -> tuple[bool, int]:
        tokens = await generator.count_tokens([*head, *turns[start:]])
        return tokens <= budget, tokens

    ok, tokens = await fits(starts[-1])
    if not ok:
        raise PromptTooLong(tokens, budget)
    # Longer suffixes only grow, so binary-search the earliest start that still fits.
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high) // 2
        if (await fits(starts[middle]))[0]:
            high = middle
        else:
            low = middle + 1
    return [*head, *turns[starts[low] :]]
