"""The two workloads of ``bench/serving.py`` and how one system's answers are summarised.

Every system gets the same requests with the same greedy settings:

- ``fixed``: rows of exactly ``tokens`` tokens each, the end of turn ignored, no system prompt:
  the engine's capacity, every row running its full length;
- ``chat``: the bot's default system prompt, replies of at most ``tokens`` tokens that stop at
  the end of their turn: what users see.

A system is a :data:`StreamFn`: it streams one request's reply as :class:`Piece` events (text,
and the server's own token count at the end where it reports one). Token accounting is the same
for every system: a ``fixed`` reply counts the tokens the workload asks for (every system is
checked to have made them: the servers' own counts must agree, the engine's stop ids are
emptied), a ``chat`` reply is counted by the model's tokenizer on its text.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from bench.common import PROMPTS, QUESTIONS, percentile
from bot.types import GenerationParams, Turn

WORKLOADS = ("fixed", "chat")


@dataclass(frozen=True)
class Workload:
    """One batch of requests: what they ask, how many at once (1: one after another)."""

    kind: str  # "fixed" or "chat"
    requests: tuple[tuple[Turn, ...], ...]
    params: GenerationParams
    concurrency: int

    @property
    def ignore_eos(self) -> bool:
        return self.kind == "fixed"


@dataclass(frozen=True)
class Piece:
    """One event of a streamed reply: text, or (at the end) the server's token count."""

    text: str = ""
    tokens: int | None = None


StreamFn = Callable[[Workload, tuple[Turn, ...]], AsyncIterator[Piece]]


@dataclass
class Served:
    """One request as its client saw it: seconds to the first text and in all (from the time
    the request was sent), the text, and the server's token count if it reported one."""

    ttft: float
    seconds: float
    text: str
    reported: int | None = None


@dataclass
class Measured:
    """One workload run on one system."""

    served: list[Served] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def questions(count: int) -> list[str]:
    """``count`` distinct user messages: the benches' questions, numbered once they repeat."""
    unique = list(dict.fromkeys((*QUESTIONS, *PROMPTS)))
    return [
        unique[i % len(unique)] + (f" (question {i + 1})" if i >= len(unique) else "")
        for i in range(count)
    ]


def workload(kind: str, count: int, concurrency: int, tokens: int, system: str) -> Workload:
    """The ``kind`` workload of ``count`` requests, greedy, at most ``tokens`` new tokens."""
    if kind not in WORKLOADS:
        raise ValueError(f"unknown workload {kind!r}; one of {', '.join(WORKLOADS)}")
    head = () if kind == "fixed" else (Turn("system", system),)
    requests = tuple((*head, Turn("user", q)) for q in questions(count))
    params = GenerationParams(
        max_new_tokens=tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0
    )
    return Workload(kind, requests, params, concurrency)


async def measure(stream: StreamFn, load: Workload) -> Measured:
    """Send ``load``'s requests to ``stream``, ``concurrency`` at a time, and time them."""
    gate = asyncio.Semaphore(load.concurrency)
    result = Measured()
    started = time.perf_counter()

    async def one(turns: tuple[Turn, ...]) -> Served | None:
        async with gate:
            try:
                return await _timed(stream(load, turns))
            except Exception as exc:  # a failed request is reported, not fatal to the run
                result.errors.append(f"{type(exc).__name__}: {exc}")
                return None

    served = await asyncio.gather(*(one(turns) for turns in load.requests))
    result.wall_s = time.perf_counter() - started
    result.served = [s for s in served if s is not None]
    return result


async def _timed(pieces: AsyncIterator[Piece]) -> Served:
    sent = time.perf_counter()
    first: float | None = None
    text, reported = "", None
    async for piece in pieces:
        if piece.text:
            first = first or time.perf_counter()
            text += piece.text
        if piece.tokens is not None:
            reported = piece.tokens
    done = time.perf_counter()
    return Served((first or done) - sent, done - sent, text, reported)


@dataclass(frozen=True)
class Summary:
    """One system on one workload: total tokens/s, time to first token, tokens counted."""

    tokens: int
    total: float
    ttft50: float
    ttft95: float
    mismatches: int  # fixed rows whose server-reported count is not the tokens asked for
    decode: float = math.nan  # fixed rows one at a time: decoding tok/s after the first token


def summarize(load: Workload, result: Measured, count: Callable[[str], int]) -> Summary:
    """Tokens by the workload's accounting (see the module docstring) over the wall time."""
    asked = load.params.max_new_tokens
    if load.ignore_eos:
        tokens = [asked for _ in result.served]
        mismatches = sum(s.reported is not None and s.reported != asked for s in result.served)
    else:
        tokens = [count(s.text) for s in result.served]
        mismatches = 0
    ttfts = sorted(s.ttft for s in result.served)
    total = sum(tokens) / result.wall_s if result.wall_s > 0 else float("nan")
    decode = math.nan
    if load.ignore_eos and load.concurrency == 1:
        decode = decode_rate(result, asked)
    return Summary(
        sum(tokens), total, percentile(ttfts, 0.5), percentile(ttfts, 0.95), mismatches, decode
    )


def median_summary(runs: Sequence[Summary]) -> Summary:
    """Each figure's median over several runs (mismatches: the most in any run)."""
    if not runs:
        raise ValueError("no runs to summarise")
    return Summary(
        round(statistics.median(r.tokens for r in runs)),
        statistics.median(r.total for r in runs),
        statistics.median(r.ttft50 for r in runs),
        statistics.median(r.ttft95 for r in runs),
        max(r.mismatches for r in runs),
        statistics.median(r.decode for r in runs),
    )


def decode_rate(result: Measured, tokens: int) -> float:
    """Decoding speed of replies served alone: the tokens after the first over the seconds
    after it, best reply (``tokens`` made by each)."""
    rates = [(tokens - 1) / (s.seconds - s.ttft) for s in result.served if s.seconds > s.ttft]
    return max(rates) if rates else float("nan")


async def run_system(
    name: str, stream: StreamFn, loads: dict[str, Workload], runs: int, count: Callable[[str], int]
) -> dict[str, Summary]:
    """Each workload ``runs`` times on one system (after one warm-up request); the medians."""
    first = next(iter(loads.values()))
    await measure(stream, Workload(first.kind, first.requests[:1], first.params, 1))
    summaries: dict[str, list[Summary]] = {key: [] for key in loads}
    for run in range(runs):
        for key, load in loads.items():
            result = await measure(stream, load)
            summary = summarize(load, result, count)
            summaries[key].append(summary)
            errors = f", {len(result.errors)} errors: {result.errors[:2]}" if result.errors else ""
            print(
                f"  ... {name} run {run + 1} {key}: {summary.total:.1f} tok/s{errors}", flush=True
            )
    return {key: median_summary(values) for key, values in summaries.items() if values}
