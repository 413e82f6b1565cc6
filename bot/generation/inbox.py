"""What an engine thread receives from other threads, for both local engines (``bot.engine``,
torch, and ``bot.ggml``, llama.cpp): requests, swaps and the stop. No torch.

A request is bound to the adapter its slot serves when it is submitted, and a swap changes what
a slot serves only when the engine thread has the new adapter ready (:meth:`Inbox.serve`), under
the same lock: what :meth:`Inbox.source` names is what the next request gets, however long the
queue. Queued requests keep their adapter pinned (:meth:`Inbox.pinned`), so it is never freed or
overwritten under them. After :meth:`Inbox.stop` nothing more is queued: it would never be
answered.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from bot.errors import GenerationError
from bot.generation import DEFAULT_SLOT
from bot.generation.channel import Channel, Receiver, Sink, deliver
from bot.types import GenerationParams

P = TypeVar("P")  # an engine's prompt (token ids and what the engine keeps with them)


@dataclass
class Request(Generic[P]):
    """One reply to generate: a prompt in, text pieces out through ``sink``, with the adapter
    slot it asks for.

    ``prompt`` is called on the engine thread when the request is admitted (:meth:`tokens`), so
    tokenizing never blocks the event loop and requests keep the order they were submitted in.
    """

    prompt: Callable[[], P]
    params: GenerationParams
    sink: Sink
    slot: str = DEFAULT_SLOT
    cancelled: threading.Event = field(default_factory=threading.Event)
    _tokens: P | None = field(default=None, init=False, repr=False)

    def cancel(self) -> None:
        """Stop generating; safe from any thread. Takes effect before the next step."""
        self.cancelled.set()

    def limit(self, prompt_tokens: int, context_window: int) -> int:
        """The most tokens (prompt and reply) its row may reach: the prompt plus
        ``max_new_tokens``, within the context window. GenerationError when nothing fits."""
        if self.params.max_new_tokens < 1:
            raise GenerationError("max_new_tokens must be at least 1")
        room = context_window - prompt_tokens
        if room <= 0 or not prompt_tokens:
            raise GenerationError(
                f"the conversation is too long for the model: {prompt_tokens} tokens, "
                f"and the context window holds {context_window}"
            )
        return prompt_tokens + min(self.params.max_new_tokens, room)

    def tokens(self) -> P:
        """The prompt, made once (a request that waits for room is not tokenized again)."""
        if self._tokens is None:
            self._tokens = self.prompt()
        return self._tokens


class Slotted(Receiver, Protocol):
    """A request as the inbox sees it: the slot it asks for, and its consumer."""

    @property
    def slot(self) -> str: ...


R = TypeVar("R", bound=Slotted)  # an engine's request
A = TypeVar("A", bound=Hashable)  # an engine's adapter handle; None is the base model
W = TypeVar("W")  # what a swap carries to the engine thread (weights, a file)


@dataclass
class Queued(Generic[R, A]):
    """A request received, with the adapter it was bound to."""

    request: R
    adapter: A | None  # what its slot served when it was submitted


@dataclass
class Swap(Generic[W]):
    """Serve ``slot`` with ``payload`` once the engine thread has it ready."""

    slot: str
    payload: W | None  # None: the base model (a slot other than the default: emptied)
    source: Path | None  # what the slot is said to serve (the adapter directory)
    future: concurrent.futures.Future[None]


_STOP = object()


class Inbox(Generic[R, A, W]):
    """The engine thread's queue of commands, the slots' adapters as requests are bound to them,
    and the requests received but not started (``pending``, the engine thread's only)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Queued[R, A] | Swap[W] | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        # slot: (adapter, source); the default slot is always served (at first: the base model)
        self._slots: dict[str, tuple[A | None, Path | None]] = {DEFAULT_SLOT: (None, None)}
        self._queued: collections.Counter[A | None] = collections.Counter()
        self.pending: collections.deque[Queued[R, A]] = collections.deque()

    # Any thread.

    def submit(self, request: R) -> None:
        """Queue ``request``, bound now to its slot's adapter; after the stop it gets a
        GenerationError instead."""
        with self._lock:
            if not self._stopped:
                adapter = self._slots.get(request.slot, (None, None))[0]
                self._queued[adapter] += 1
                self._queue.put(Queued(request, adapter))
                return
        deliver(request, GenerationError("the model is shutting down"))

    def source(self, slot: str) -> Path | None:
        """What ``slot`` serves: the next request submitted for it gets this adapter."""
        with self._lock:
            return self._slots.get(slot, (None, None))[1]

    def swap(
        self, slot: str, payload: W | None, source: Path | None
    ) -> concurrent.futures.Future[None]:
        """Queue a swap for the engine thread (it is not held behind queued requests: they
        are bound already); the future fails at once after the stop."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._stopped:
                future.set_exception(GenerationError("the model is shutting down"))
            else:
                self._queue.put(Swap(slot, payload, source, future))
        return future

    def stop(self) -> None:
        """Ask the engine thread to stop; nothing is queued after this."""
        with self._lock:
            self._stopped = True
            self._queue.put(_STOP)

    # The engine thread.

    def receive(self, run_swap: Callable[[Swap[W]], None], *, block: bool) -> bool:
        """Run swaps and move requests to ``pending``, waiting for a first command when
        ``block``; False once the stop was asked for."""
        try:
            command = self._queue.get(block=block)
            while True:
                if command is _STOP:
                    return False
                if isinstance(command, Swap):
                    run_swap(command)  # not behind waiting requests: they are bound
                else:
                    assert isinstance(command, Queued)
                    self.pending.append(command)
                command = self._queue.get_nowait()
        except queue.Empty:
            return True

    def take(self) -> Queued[R, A]:
        """The first pending request leaves the queue: its adapter is no longer pinned by it."""
        queued = self.pending.popleft()
        with self._lock:
            self._queued[queued.adapter] -= 1
        return queued

    def serve(self, slot: str, adapter: A | None, source: Path | None) -> None:
        """From now on, requests submitted for ``slot`` are bound to ``adapter``."""
        with self._lock:
            self._slots[slot] = (adapter, source)

    def empty(self, slot: str) -> None:
        """``slot`` (not the default) serves the base model from now on, and holds nothing."""
        with self._lock:
            self._slots.pop(slot, None)

    def resolve(self, slot: str) -> A | None:
        """The adapter ``slot`` binds requests to now."""
        with self._lock:
            return self._slots.get(slot, (None, None))[0]

    def pinned(self) -> set[A | None]:
        """Adapters a slot serves or a queued request is bound to: they must stay."""
        with self._lock:
            served = {adapter for adapter, _ in self._slots.values()}
            return served | {adapter for adapter, count in self._queued.items() if count}

    def close(self, error: GenerationError) -> list[R]:
        """Stop taking commands (also when the thread ends abnormally); fail the swaps still
        queued with ``error`` and return every request received but not started."""
        with self._lock:
            self._stopped = True
        while True:
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, Swap):
                command.future.set_exception(error)
            elif isinstance(command, Queued):
                self.pending.append(command)
        requests = [queued.request for queued in self.pending]
        self.pending.clear()
        with self._lock:
            self._queued.clear()
        return requests


async def reply_pieces(
    submit: Callable[[Request[P]], None],
    prompt: Callable[[], P],
    params: GenerationParams,
    slot: str,
) -> AsyncGenerator[str, None]:
    """A reply's text as an engine thread makes it: a Request for ``prompt`` goes to ``submit``
    (bound there to the adapter ``slot`` serves now); closing the generator stops the engine's
    work for it."""
    channel = Channel(asyncio.get_running_loop())
    request = Request(prompt, params, channel.put, slot)
    submit(request)
    try:
        while (piece := await channel.piece()) is not None:
            yield piece
    finally:
        request.cancel()  # a no-op when finished; stops the engine's work when abandoned
