"""Simulated chats for ``bench/serving.py``: N users talking to the real ChatService at once.

Every chat is a real conversation through the product path (stored message, history, prompt
fitting, streaming, stored reply) on a temporary SQLite database, with the real generator.
Chats start within a short random window, so requests join a batch that is already running,
and each sends ``turns`` messages one after another (the second carries the first exchange as
history, behind the same system prompt).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import QUESTIONS
from bot.generation import DEFAULT_SLOT, Generator
from bot.types import Draft, GenerationParams, Incoming, Reply, ReplyKind, Turn

FOLLOW_UPS = ["Tell me more.", "Can you say that more simply?", "Why is that?"]


@dataclass
class Request:
    """One generation as the bench saw it; ``turns`` and ``params`` replay it elsewhere."""

    turns: tuple[Turn, ...]
    params: GenerationParams
    arrived: float  # seconds since the run started
    first_token: float | None = None  # seconds since arrival
    finished: float | None = None  # seconds since arrival
    text: str = ""


@dataclass
class RunResult:
    requests: list[Request] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    peak_mb: float = 0.0


class RecordingGenerator:
    """Wraps the real generator to note every request's prompt, params and timing."""

    def __init__(self, inner: Generator, clock: Callable[[], float]) -> None:
        self._inner = inner
        self._clock = clock
        self.requests: list[Request] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def aclose(self) -> None:
        """The bench closes the real generator itself, after every run."""

    async def stream(
        self, turns: Sequence[Turn], params: GenerationParams, *, slot: str = DEFAULT_SLOT
    ) -> AsyncIterator[str]:
        request = Request(tuple(turns), params, self._clock())
        self.requests.append(request)
        async for piece in self._inner.stream(turns, params, slot=slot):
            if request.first_token is None:
                request.first_token = self._clock() - request.arrived
            request.text += piece
            yield piece
        request.finished = self._clock() - request.arrived


async def run_chats(
    core_factory: Callable[[Generator], Any],
    generator: Generator,
    chats: int,
    turns: int,
    *,
    spread_s: float = 1.0,
    seed: int = 0,
) -> RunResult:
    """Run ``chats`` conversations at once through a fresh core; returns what happened."""
    started = time.perf_counter()
    recorder = RecordingGenerator(generator, lambda: time.perf_counter() - started)
    core = await core_factory(recorder)
    rng = random.Random(seed)
    result = RunResult()

    async def chat(index: int) -> None:
        await asyncio.sleep(rng.uniform(0.0, spread_s))
        for turn in range(turns):
            question = QUESTIONS[index % len(QUESTIONS)] if turn == 0 else FOLLOW_UPS[turn % 3]
            incoming = Incoming("bench", f"chat{index}", f"user{index}", f"User {index}", question)
            async for item in core.service.respond(incoming):
                if isinstance(item, Reply) and item.kind is not ReplyKind.ANSWER:
                    result.errors.append(item.text)
                assert isinstance(item, Draft | Reply)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(chat(i) for i in range(chats)))
        result.seconds = time.perf_counter() - started
    finally:
        await core.aclose()
    result.requests = recorder.requests
    return result


class PeakMemory:
    """Samples a process's resident memory every 20 ms in a thread; ``peak_mb`` after exit.

    ``tree``: the process and all its descendants together (a server's workers)."""

    def __init__(self, pid: int | None = None, *, tree: bool = False) -> None:
        self.pid = pid or os.getpid()
        self.tree = tree
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            pids = descendants(self.pid) if self.tree else [self.pid]
            rss = sum(rss_mb(pid) or 0.0 for pid in pids)
            if rss_mb(self.pid) is None:
                return  # the process is gone
            self.peak_mb = max(self.peak_mb, rss)
            if self._stop.wait(0.1 if self.tree else 0.02):
                return


def rss_mb(pid: int) -> float | None:
    """A process's resident memory in MB (None once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/PID/task/TID/children)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue.extend(int(child) for child in task.read_text().split())
            except (OSError, ValueError):
                continue
    return found
