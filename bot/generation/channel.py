"""From an engine thread to the event loop: what both local engines (``bot.engine``, torch, and
``bot.ggml``, llama.cpp) hand each reply's pieces through. No torch."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bot.errors import GenerationError, LoraError

log = logging.getLogger(__name__)

Item = str | BaseException | None  # a piece of text, the error that ended it, or None: done
Sink = Callable[[Item], None]  # where a request's items go (a Channel's put)


class Receiver(Protocol):
    """A request as the engines deliver to it: its consumer's sink, and a way to stop it."""

    @property
    def sink(self) -> Sink: ...

    def cancel(self) -> None: ...


class Channel:
    """Carries engine output (a request's sink) to one consumer on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    def put(self, item: Item) -> None:
        """Thread-safe; raises RuntimeError once the loop is closed (the engine then cancels)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def piece(self) -> str | None:
        """The next piece of text; None once the reply is complete; raises the error that
        ended it instead."""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


async def swapped(future: concurrent.futures.Future[None], path: Path | None) -> None:
    """Wait until an engine thread has served ``path`` (the future of its swap). Shielded: a
    caller that gives up does not stop the swap half-way. LoraError and GenerationError pass
    as they are; any other failure there (e.g. out of memory) is a LoraError."""
    try:
        await asyncio.shield(asyncio.wrap_future(future))
    except (GenerationError, LoraError):
        raise
    except Exception as exc:
        raise LoraError(f"cannot serve adapter {path}: {exc}") from exc


def deliver(request: Receiver, item: Item) -> None:
    """Hand ``item`` (text, an error, or None at the end) to the request's consumer; cancel the
    request if the consumer is gone."""
    try:
        request.sink(item)
    except Exception:  # the consumer is gone (e.g. its event loop closed): stop working for it
        request.cancel()


def fail(request: Receiver, exc: Exception, what: str) -> None:
    """This request ends with ``exc`` as a GenerationError; the others go on. An unexpected
    error (a bug) is logged with ``what`` and its traceback."""
    if not isinstance(exc, GenerationError):
        log.exception(what)
    deliver(request, as_generation_error(exc))


def as_generation_error(exc: Exception) -> GenerationError:
    """``exc`` as the error a reply's consumer gets."""
    if isinstance(exc, GenerationError):
        return exc
    return GenerationError(f"the model failed to generate ({type(exc).__name__}: {exc})")


class TextOut(Protocol):
    """A reply's incremental detokenizer: text for each token (held back while a character is
    incomplete), and at the end what is still held back."""

    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


class ReplyOut:
    """A reply's tokens (the prompt first: a repetition penalty sees both) and its way out to
    the consumer, for either engine's row."""

    def __init__(self, request: Receiver, prompt: list[int], limit: int, text: TextOut) -> None:
        self.request = request
        self.tokens = list(prompt)
        self.limit = limit  # most tokens (prompt + reply) it may reach
        self.text = text

    def take(self, token: int, stop_ids: frozenset[int]) -> bool:
        """A sampled token: its text goes out; whether the reply is complete (a stop token,
        which is not kept, or the limit)."""
        if token in stop_ids:
            return True
        self.tokens.append(token)
        piece = self.text.push(token)
        if piece:
            deliver(self.request, piece)
        return len(self.tokens) >= self.limit

    def finish(self) -> None:
        """End the reply: the text still held back (an incomplete character), then None."""
        rest = self.text.flush()
        if rest:
            deliver(self.request, rest)
        deliver(self.request, None)
