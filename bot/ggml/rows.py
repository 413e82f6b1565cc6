"""What the llama.cpp engine keeps per request and per context: requests, rows and lanes.

A *row* is one reply being generated: its tokens (prompt + reply), how many of them are in the
KV cache already, its sampler and its text stream. A *lane* is one llama.cpp context with one
adapter (or none) and the rows that decode in it; each row has its own ``seq_id`` there, and so
does each prompt prefix (system turn) the lane keeps for later rows. Each lane times its own
steps to pick their thread count (bot.ggml.threads): an adapter's steps cost more.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.generation.channel import ReplyOut
from bot.generation.inbox import Request as InboxRequest
from bot.ggml.llama import Adapter, Context, ContextShape
from bot.ggml.sampling import Sampler
from bot.ggml.text import Prompt, TextStream
from bot.ggml.threads import ThreadTuner

Request = InboxRequest[Prompt]  # prompts with the system turn's length, for the KV prefixes


class Row:
    """One running reply in a lane."""

    def __init__(
        self, request: Request, prompt: list[int], limit: int, seq_id: int, text: TextStream
    ) -> None:
        self.request = request
        self.out = ReplyOut(request, prompt, limit, text)
        self.fed = 0  # tokens already in the KV cache (the rest are fed in the next steps)
        self.reserved = limit  # KV cells it may still take (less what a shared prefix holds)
        self.seq_id = seq_id
        self.prefix: Prefix | None = None  # the shared prefix whose cells it reads
        self.publish: tuple[int, ...] = ()  # its system turn, to share once it is computed
        self.sampler = Sampler(request.params)

    @property
    def tokens(self) -> list[int]:
        """Prompt + reply so far."""
        return self.out.tokens

    @property
    def waiting(self) -> int:
        """Tokens still to feed: the prompt's rest while prefilling, then the last sample."""
        return len(self.tokens) - self.fed

    def advance(self, token: int, stop_ids: frozenset[int]) -> bool:
        """Take a sampled token; return whether the reply is complete."""
        return self.out.take(token, stop_ids)

    def finish(self) -> None:
        """End the reply: the text still held back, then None."""
        self.out.finish()


@dataclass
class Prefix:
    """A prompt prefix (a system turn) whose KV cells a lane keeps under its own ``seq_id``;
    rows starting with it get its cells instead of computing them."""

    ids: tuple[int, ...]
    seq_id: int
    users: int = 0  # running rows reading its cells: it is never evicted under them
    used: int = 0  # when it was last shared (the lane's clock): the oldest unused goes first


class Lane:
    """A llama.cpp context with its adapter (None: the base model), its rows and the prompt
    prefixes it keeps (``shape.prefixes`` of them, ``shape.prefix_tokens`` tokens at most).

    ``reserved`` counts every KV cell the rows may still take plus the prefixes' cells, so
    ``llama_decode`` never runs out of cells.
    """

    def __init__(self, context: Context, adapter: Adapter | None, shape: ContextShape) -> None:
        self.context = context
        self.adapter = adapter
        self.tuner = ThreadTuner(shape.thread_choices or (shape.threads,))  # per step
        self.rows: list[Row] = []
        self.reserved = 0
        self.prefixes: dict[tuple[int, ...], Prefix] = {}
        self._prefix_tokens = shape.prefix_tokens
        self._free_ids = list(range(shape.max_rows - 1, -1, -1))
        self._prefix_ids = list(range(shape.max_rows + shape.prefixes - 1, shape.max_rows - 1, -1))
        self._clock = 0

    def room(self) -> int:
        """KV cells no row and no prefix holds."""
        return self.context.capacity - self.reserved

    def fits(self, prompt: Prompt, limit: int) -> bool:
        """Whether a row for ``prompt`` reaching ``limit`` tokens has its KV cells, after
        evicting unused prefixes (oldest first; never the one it would share). Prefixes are
        evicted only when that makes it fit: a request that must wait anyway keeps them."""
        keep = self._cached(prompt)
        need = limit - (len(keep.ids) if keep is not None else 0)
        if self.room() + self._evictable(keep) < need:
            return False
        while self.room() < need and self._evict_one(keep):
            pass
        return True

    def open(self, request: Request, prompt: Prompt, limit: int, text: TextStream) -> Row:
        """A row for ``request``: with a kept prefix's cells when its system turn has one."""
        seq_id = self._free_ids.pop()
        try:
            row = Row(request, prompt.ids, limit, seq_id, text)
        except BaseException:
            self._free_ids.append(seq_id)  # the id is free again: no row has it
            raise
        prefix = self._cached(prompt)
        if prefix is not None:
            self.context.share(prefix.seq_id, row.seq_id, len(prefix.ids))
            row.fed = len(prefix.ids)
            self._attach(row, prefix)
        elif 0 < prompt.shared <= self._prefix_tokens:
            row.publish = tuple(prompt.ids[: prompt.shared])
        self.rows.append(row)
        self.reserved += row.reserved
        return row

    def publish(self, row: Row) -> None:
        """Keep the row's system turn (now computed) as a prefix, if there is space for it."""
        ids, row.publish = row.publish, ()
        if not ids or ids in self.prefixes:
            return
        while self._prefix_ids == [] or self._held() + len(ids) > self._prefix_tokens:
            if not self._evict_one(None):
                return
        prefix = self.prefixes[ids] = Prefix(ids, self._prefix_ids.pop())
        self.context.share(row.seq_id, prefix.seq_id, len(ids))
        self._attach(row, prefix)  # its cells now belong to the prefix: the total is the same

    def close(self, row: Row) -> None:
        """Drop a row and free its KV cells (a prefix's stay with the prefix)."""
        self.rows.remove(row)
        self.context.forget(row.seq_id)
        self._free_ids.append(row.seq_id)
        self.reserved -= row.reserved
        if row.prefix is not None:
            row.prefix.users -= 1

    def _cached(self, prompt: Prompt) -> Prefix | None:
        if not 0 < prompt.shared < len(prompt.ids):
            return None
        return self.prefixes.get(tuple(prompt.ids[: prompt.shared]))

    def _attach(self, row: Row, prefix: Prefix) -> None:
        # The prefix holds those cells (counted in ``reserved`` once, as the prefix's).
        row.prefix = prefix
        row.reserved -= len(prefix.ids)
        prefix.users += 1
        self._clock += 1
        prefix.used = self._clock

    def _evictable(self, keep: Prefix | None) -> int:
        return sum(len(p.ids) for p in self._unused(keep))

    def _unused(self, keep: Prefix | None) -> list[Prefix]:
        return [p for p in self.prefixes.values() if p.users == 0 and p is not keep]

    def _held(self) -> int:
        return sum(len(ids) for ids in self.prefixes)

    def _evict_one(self, keep: Prefix | None) -> bool:
        unused = self._unused(keep)
        if not unused:
            return False
        oldest = min(unused, key=lambda p: p.used)
        del self.prefixes[oldest.ids]
        self.context.forget(oldest.seq_id)
        self._prefix_ids.append(oldest.seq_id)
        self.reserved -= len(oldest.ids)
        return True
