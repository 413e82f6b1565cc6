"""What the tests of both local engines (tests/engine, torch; tests/ggml, llama.cpp) share:
prompts, a whole reply, waiting for the engine thread, and scenarios both must pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.generation import Generator
from bot.types import GenerationParams, Turn

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
HELLO = [Turn("user", "Hello! Tell me about the sea.")]
PROMPTS = [
    [Turn("user", "Hi")],
    [Turn("system", "Be brief."), Turn("user", "What is a whale?")],
    [Turn("user", "Tell me a long story about the deep blue sea and a small boat " * 3)],
    [Turn("user", "why"), Turn("assistant", "because"), Turn("user", "why not?")],
]


async def reply(
    gen: Generator, turns: Sequence[Turn], params: GenerationParams = GREEDY, slot: str = "default"
) -> str:
    return "".join([piece async for piece in gen.stream(turns, params, slot=slot)])


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def slot_lora_is_what_serves_the_next_stream(
    gen: Any, adapter: Path, *, base: str, tuned: str, busy_tokens: int
) -> None:
    """With the only row busy (``busy_tokens`` of a slowed engine) and a request waiting for
    it, swap the default slot to ``adapter``: whatever slot_lora says just before a stream
    starts (what the chat service records) is what serves it, and the waiting request keeps
    the adapter it was submitted to. ``gen``: either local generator (it has ``stats``);
    ``base``/``tuned``: HELLO's greedy reply without/with the adapter."""
    running = gen.stream(HELLO, GenerationParams(max_new_tokens=busy_tokens, temperature=0.0))
    await anext(aiter(running))  # the only row is taken for a few seconds
    waiting = asyncio.create_task(reply(gen, HELLO))
    await eventually(lambda: gen.stats.waiting == 1)
    swap = asyncio.create_task(gen.swap_lora(adapter))
    await asyncio.sleep(0.3)  # the swap is done, or not yet: either way, slot_lora is right
    recorded = gen.slot_lora("default")
    after = asyncio.create_task(reply(gen, HELLO))
    await running.aclose()
    await swap
    assert await after == (tuned if recorded == adapter else base)
    assert await waiting == base  # submitted before the swap: the adapter it was sent to
    assert gen.slot_lora("default") == adapter
