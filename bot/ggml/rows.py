"""What the llama.cpp engine keeps per request and per context: requests, rows and lanes.

A *row* is one reply being generated: its tokens (prompt + reply), how many of them are in the
KV cache already, its sampler and its text stream. A *lane* is one llama.cpp context with one
adapter (or none) and the rows that decode in it; each row has its own ``seq_id`` there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.generation import DEFAULT_SLOT
from bot.ggml.llama import Adapter, Context
from bot.ggml.sampling import Sampler
from bot.ggml.text import TextStream
from bot.types import GenerationParams

Sink = Callable[[str | BaseException | None], None]
"""Gets text pieces, then None at the end (or an exception instead); runs on the engine thread."""


@dataclass
class Request:
    """One reply to generate: ``prompt`` (called on the engine thread when the request is
    admitted, so tokenizing never blocks the event loop) in, text pieces out through ``sink``."""

    prompt: Callable[[], list[int]]
    params: GenerationParams
    sink: Sink
    slot: str = DEFAULT_SLOT  # resolved to an adapter when admitted
    cancelled: threading.Event = field(default_factory=threading.Event)
    ids: list[int] | None = None  # the prompt, once tokenized (it may wait for KV room)

    def cancel(self) -> None:
        """Stop generating; safe from any thread. Takes effect before the next step."""
        self.cancelled.set()


class Channel:
    """Carries engine output (a request's sink) to one consumer on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    def put(self, item: str | BaseException | None) -> None:
        """Thread-safe; raises RuntimeError once the loop is closed (the engine then cancels)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> str | BaseException | None:
        return await self._queue.get()


def deliver(request: Request, item: str | BaseException | None) -> None:
    """Hand ``item`` to the request's consumer; cancel the request if the consumer is gone."""
    try:
        request.sink(item)
    except Exception:  # the consumer is gone (e.g. its event loop closed): stop working for it
        request.cancel()


class Row:
    """One running reply in a lane."""

    def __init__(
        self, request: Request, prompt: list[int], limit: int, seq_id: int, text: TextStream
    ) -> None:
        self.request = request
        self.tokens = list(prompt)  # prompt + reply: the repetition penalty sees both
        self.fed = 0  # tokens already in the KV cache (the rest are fed in the next steps)
        self.limit = limit  # most tokens (prompt + reply) it may reach: its KV reservation
        self.seq_id = seq_id
        self.sampler = Sampler(request.params)
        self.text = text

    @property
    def waiting(self) -> int:
        """Tokens still to feed: the prompt's rest while prefilling, then the last sample."""
        return len(self.tokens) - self.fed

    def advance(self, token: int, stop_ids: frozenset[int]) -> bool:
        """Take a sampled token; return whether the reply is complete."""
        if token in stop_ids:
            return True
        self.tokens.append(token)
        piece = self.text.push(token)
        if piece:
            deliver(self.request, piece)
        return len(self.tokens) >= self.limit


class Lane:
    """A llama.cpp context with its adapter (None: the base model) and its rows."""

    def __init__(self, context: Context, adapter: Adapter | None, max_rows: int) -> None:
        self.context = context
        self.adapter = adapter
        self.rows: list[Row] = []
        self.reserved = 0  # KV cells the rows may still need, all told
        self._free_ids = list(range(max_rows - 1, -1, -1))

    def room(self) -> int:
        """KV cells no row has reserved."""
        return self.context.capacity - self.reserved

    def open(self, request: Request, prompt: list[int], limit: int, text: TextStream) -> Row:
        row = Row(request, prompt, limit, self._free_ids.pop(), text)
        self.rows.append(row)
        self.reserved += limit
        return row

    def close(self, row: Row) -> None:
        """Drop a row and free its KV cells."""
        self.rows.remove(row)
        self.context.forget(row.seq_id)
        self._free_ids.append(row.seq_id)
        self.reserved -= row.limit
