"""Fitting history into the context window, by tokens."""

from __future__ import annotations

import pytest

from bot.chat.prompt import fit_prompt
from bot.errors import PromptTooLong
from bot.generation import ScriptedGenerator
from bot.types import Turn


def _turns(n: int) -> list[Turn]:
    out = []
    for i in range(n):
        out += [Turn("user", f"question {i} " + "w " * 5), Turn("assistant", f"answer {i}")]
    return out


async def test_everything_fits() -> None:
    turns = _turns(3)
    fitted = await fit_prompt("sys", turns, ScriptedGenerator(), budget=1000)
    assert fitted == [Turn("system", "sys"), *turns]


async def test_oldest_turns_are_dropped_and_the_prompt_starts_with_a_user_turn() -> None:
    generator = ScriptedGenerator()
    turns = [*_turns(10), Turn("user", "latest")]
    for budget in range(20, 200, 7):
        try:
            fitted = await fit_prompt("sys", turns, generator, budget)
        except PromptTooLong:
            continue
        assert await generator.count_tokens(fitted) <= budget
        assert fitted[1].role == "user" and fitted[-1] == Turn("user", "latest")
        # Maximal: one more exchange would not fit.
        start = turns.index(fitted[1])
        if start >= 2:
            bigger = [fitted[0], *turns[start - 2 :]]
            assert await generator.count_tokens(bigger) > budget


async def test_no_system_prompt() -> None:
    fitted = await fit_prompt("", [Turn("user", "hi")], ScriptedGenerator(), 100)
    assert fitted == [Turn("user", "hi")]


async def test_too_long_alone() -> None:
    with pytest.raises(PromptTooLong) as error:
        await fit_prompt("sys", [Turn("user", "w " * 500)], ScriptedGenerator(), budget=100)
    assert error.value.budget == 100 and error.value.tokens > 100
