"""How many threads each step of the llama.cpp engine decodes with, chosen by measurement.

ggml's threads wait for one another at every operation of a step (hundreds per token), so one
thread the OS deschedules stalls them all. On the 2-core reference machine a lone reply decodes
at 115-118 tokens/s on 2 threads and 86-89 on 1 when nothing else runs, but with one other busy
process (nice 0) at 36-37 on 2 threads and 85-95 on 1 (bench/serving_threads.py): no fixed
count is right for both. With ``model.threads`` unset each lane (llama.cpp context) of the
engine has a :class:`ThreadTuner` that chooses between every core but one and every core, step
by step. It keeps the recent decode time per token of each count per step size (its fastest of
the last RECENT steps), uses the faster, and tries the other now and then: every ``explore``
steps of that size, twice as seldom after each try that loses (up to MAX_GAP), so a steady load
costs little, and every ``explore`` steps again once a try wins. When the count in use turns
SLOWER times slower for RECENT steps in a row (the load changed) the other count is tried at
once and the gaps start over, however long they had grown. A try's time replaces the count's
old figures, which the load may have outdated; so the tuner follows the load as it changes.
Ranking by the fastest of recent steps favours a count that is fast most of the time: under a
load that stalls about every other step, an average would rank differently. A set
``model.threads`` is used as it is.

ggml's CPU attention splits a lone row's keys among the threads once its KV cache holds 512
cells or more, so such a reply's logits differ in the last bits with the thread count, and a
greedy reply may change at a near-tie with the machine's load, as it may with the batch around
it (measured on the default model, 96 tokens after a 649-token prompt: 12 of 16 replies
identical on 1 and 2 threads; tests/ggml/test_generator.py bounds it). A set ``model.threads``
rules that out.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

EXPLORE = 16  # steps of one size between two tries of a slower count, at first
MAX_GAP = 256  # the longest gap between tries, reached while tries keep losing
RECENT = 4  # a count's figure is its fastest of this many last steps of a size: a stall
# (another process took the core for a moment) only ever makes a step slower, so one slow step
# is no reason to switch, while a load that stays shows in every step
SLOWER = 1.5  # the count in use is this much slower than it was: the load changed
SIZES = 16  # step sizes up to this many tokens are told apart one by one, larger ones by 2^k


def step_size(tokens: int) -> int:
    """The bucket of a step of ``tokens`` tokens: exact up to SIZES (decoding ``n`` rows costs
    more with each row), then by powers of two (prefill chunks)."""
    return tokens if tokens <= SIZES else SIZES + (tokens - 1).bit_length()


@dataclass
class _Size:
    """What the tuner knows about steps of one size."""

    gap: int  # steps between two tries
    steps: int = 0  # steps of this size recorded
    next_try: int = 0  # the step number of the next try
    tried: int | None = None  # the count the step being run tries, if it is a try


class ThreadTuner:
    """Picks a thread count per step among ``choices`` by measured decode time."""

    def __init__(self, choices: Sequence[int], explore: int = EXPLORE) -> None:
        if not choices:
            raise ValueError("the tuner needs at least one thread count")
        if explore < 2:
            raise ValueError("explore must be at least 2 steps")
        self.choices = tuple(dict.fromkeys(choices))
        self.explore = explore
        self._seconds: dict[tuple[int, int], deque[float]] = {}  # (size, threads) -> recent
        self._when: dict[tuple[int, int], int] = {}  # (size, threads) -> step last measured
        self._sizes: dict[int, _Size] = {}
        self._turn = 0  # which slower count is tried next (with three choices or more)

    def pick(self, tokens: int) -> int:
        """The thread count for a step of ``tokens`` tokens."""
        if len(self.choices) == 1:
            return self.choices[0]
        key = step_size(tokens)
        size = self._size(key)
        size.tried = None
        for threads in self.choices:
            if (key, threads) not in self._seconds:
                return threads  # every count is measured once first
        ranked = self._ranked(key)
        if size.steps >= size.next_try:
            self._turn += 1
            size.tried = ranked[1 + self._turn % (len(ranked) - 1)]  # the slower take turns
            return size.tried
        return ranked[0]

    def record(self, tokens: int, threads: int, seconds: float) -> None:
        """A step of ``tokens`` tokens took ``seconds`` on ``threads`` threads."""
        key = step_size(tokens)
        size = self._size(key)
        size.steps += 1
        best = self._ranked(key)[0]
        recent = self._seconds.setdefault((key, threads), deque(maxlen=RECENT))
        # Steps two steps old or more are the last try's: the load may have changed since.
        if self._when.get((key, threads), size.steps) < size.steps - 2:
            recent.clear()
        was = min(recent, default=None)
        recent.append(seconds / tokens)  # per token: a bucket of prompt chunks mixes lengths
        self._when[key, threads] = size.steps
        tried, size.tried = size.tried == threads, None
        if tried and self._ranked(key)[0] != best:  # a try that won: tries start over
            size.gap = self.explore
            size.next_try = size.steps + size.gap
        elif tried:  # a try that lost: the next one twice as late
            size.gap = min(2 * size.gap, MAX_GAP)
            size.next_try = size.steps + size.gap
        elif was is not None and min(recent) > SLOWER * was:
            # The count in use slowed down for RECENT steps: the load changed, and the other
            # count's figure is old. Tries start over: at once if that figure still looks
            # worse (it may be a stalled try), else the tuner moves and tries this one soon.
            size.gap = self.explore
            stays = self._ranked(key)[0] == threads
            size.next_try = size.steps if stays else size.steps + size.gap

    def _size(self, key: int) -> _Size:
        found = self._sizes.get(key)
        if found is None:
            found = self._sizes[key] = _Size(gap=self.explore, next_try=self.explore)
        return found

    def _ranked(self, key: int) -> list[int]:
        return sorted(self.choices, key=lambda t: min(self._seconds.get((key, t), [math.inf])))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a cpuset. A CPU quota, such as
    Docker's ``--cpus``, leaves every core of the host here: set ``model.threads`` there)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_choices(configured: int | None, cores: int) -> tuple[int, ...]:
    """The counts the tuner chooses from: the configured one alone, else every core but one
    (the event loop's) and every core."""
    if configured:
        return (configured,)
    return tuple(dict.fromkeys((max(1, cores - 1), max(1, cores))))
