"""A deterministic Generator for tests and demos (words are tokens). No torch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from bot.errors import GenerationError
from bot.generation import DEFAULT_SLOT
from bot.types import GenerationParams, Turn

ReplyFn = Callable[[Sequence[Turn], Path | None], str]


def echo(turns: Sequence[Turn], adapter: Path | None) -> str:
    """The default reply: the last message echoed, tagged with the adapter folder."""
    last = turns[-1].content if turns else ""
    tag = f" [{adapter.name}]" if adapter else ""
    return f"You said: {last}{tag}"


class ScriptedGenerator:
    """A deterministic Generator for tests: words are tokens, replies come from a function.

    It honours the contract (streaming in pieces, token counting, adapter swaps, failures on
    demand), so the core is tested against the same interface as the real model.
    """

    def __init__(
        self,
        reply: ReplyFn = echo,
        *,
        context_window: int = 512,
        delay_s: float = 0.0,
        model_name: str = "scripted",
    ) -> None:
        self._reply = reply
        self._context_window = context_window
        self._delay_s = delay_s
        self._model_name = model_name
        self._slots: dict[str, Path | None] = {DEFAULT_SLOT: None}
        self.fail_next: str | None = None
        self.requests: list[tuple[tuple[Turn, ...], GenerationParams]] = []
        self.swaps: list[Path | None] = []
        self.slots_used: list[str] = []

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def active_lora(self) -> Path | None:
        return self._slots[DEFAULT_SLOT]

    def slot_lora(self, slot: str) -> Path | None:
        return self._slots.get(slot)

    async def count_tokens(self, turns: Sequence[Turn]) -> int:
        # Four tokens of template per turn plus one per word, like a chat template would add.
        return sum(4 + len(t.content.split()) for t in turns) + 2

    async def stream(
        self, turns: Sequence[Turn], params: GenerationParams, *, slot: str = DEFAULT_SLOT
    ) -> AsyncIterator[str]:
        self.requests.append((tuple(turns), params))
        self.slots_used.append(slot)
        adapter = self._slots.get(slot)
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise GenerationError(message)
        words = self._reply(turns, adapter).split(" ")
        for i, word in enumerate(words[: params.max_new_tokens]):
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            else:
                await asyncio.sleep(0)
            yield word if i == 0 else " " + word

    async def swap_lora(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        self._slots[slot] = path
        self.swaps.append(path)

    async def aclose(self) -> None:
        return None
