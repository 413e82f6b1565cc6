"""The decode batch's KV cache: one row per sequence, its tokens from position 0 (right-padded).

Why this layout: a row's keys always sit at the same positions whatever the other rows hold, so
batched attention over the padded buffer (with a key mask) computes for a row exactly what it
computes alone (measured for the CPU's bfloat16 SDPA kernel; see :mod:`bot.engine.attention`).
And the buffer is preallocated in blocks: a decoding step writes one key and value per row in
place, where a growing cache (``DynamicCache``) copies the whole cache every step.

It is duck-typed as a transformers cache for decoding steps: the attention layers call
:meth:`update`; the batch passes position ids and a 4D key mask itself (:meth:`step_mask`), so
transformers builds no mask of its own. Full-attention layers only (Llama, SmolLM2, Qwen2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

BLOCK = 128
"""Capacity grows and shrinks in blocks of this many tokens (a copy each time it changes)."""

Pair = tuple[torch.Tensor, torch.Tensor]


def _round_up(tokens: int) -> int:
    return -(-tokens // BLOCK) * BLOCK


class RowCache:
    """Keys and values per layer, ``rows × kv_heads × capacity × head_dim``, and ``lengths``:
    the tokens each row holds (its next token is written at that position)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: torch.Tensor):
        self.keys = keys
        self.values = values
        self.lengths = lengths
        self._rows = torch.arange(len(lengths), device=lengths.device)
        self._span = 0  # keys attended to in the current step

    @classmethod
    def from_prefill(cls, pairs: Sequence[Pair], length: int) -> RowCache:
        """One row from a prefilled prompt's per-layer (keys, values), ``1 × H × length × D``."""
        capacity = _round_up(length + 1)
        keys, values = [], []
        for k, v in pairs:
            keys.append(_padded(k, capacity))
            values.append(_padded(v, capacity))
        lengths = torch.tensor([length], device=pairs[0][0].device)
        return cls(keys, values, lengths)

    def append(self, other: RowCache) -> RowCache:
        """This cache's rows followed by ``other``'s."""
        capacity = max(self.keys[0].shape[2], other.keys[0].shape[2])
        keys = [
            torch.cat([_padded(a, capacity), _padded(b, capacity)])
            for a, b in zip(self.keys, other.keys, strict=True)
        ]
        values = [
            torch.cat([_padded(a, capacity), _padded(b, capacity)])
            for a, b in zip(self.values, other.values, strict=True)
        ]
        return RowCache(keys, values, torch.cat([self.lengths, other.lengths]))

    def with_empty_rows(self, count: int) -> RowCache:
        """This cache plus ``count`` rows holding nothing (batch fillers)."""
        if count == 0:
            return self
        empty = RowCache(
            [k.new_zeros((count, *k.shape[1:])) for k in self.keys],
            [v.new_zeros((count, *v.shape[1:])) for v in self.values],
            self.lengths.new_zeros(count),
        )
        return self.append(empty)

    def select(self, indices: Sequence[int]) -> RowCache:
        """Only the rows at ``indices``; capacity shrinks to what the longest of them needs."""
        index = torch.tensor(list(indices), device=self.lengths.device)
        lengths = self.lengths[index]
        capacity = _round_up(int(lengths.max()) + 1)
        keys = [k[index, :, :capacity] for k in self.keys]
        values = [v[index, :, :capacity] for v in self.values]
        return RowCache(keys, values, lengths)

    def step_mask(self) -> torch.Tensor:
        """Prepare one decoding step (grow if a row is full); the key mask, rows × 1 × 1 × keys.

        Key ``j`` of row ``b`` is attended to iff ``j <= lengths[b]`` (its own new token too).
        """
        longest = int(self.lengths.max())
        capacity = self.keys[0].shape[2]
        if longest + 1 > capacity:
            grown = _round_up(longest + 1)
            self.keys = [_padded(k, grown) for k in self.keys]
            self.values = [_padded(v, grown) for v in self.values]
        self._span = longest + 1
        positions = torch.arange(self._span, device=self.lengths.device)
        return (positions[None, :] <= self.lengths[:, None])[:, None, None, :]

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_args: Any, **_kwargs: Any
    ) -> Pair:
        """Write each row's new key and value (rows × H × 1 × D) at its own position; return
        the keys and values attended to this step (a view of the buffers)."""
        self.keys[layer_idx][self._rows, :, self.lengths] = key[:, :, -1]
        self.values[layer_idx][self._rows, :, self.lengths] = value[:, :, -1]
        span = self._span
        return self.keys[layer_idx][:, :, :span], self.values[layer_idx][:, :, :span]

    def advance(self, fillers: int = 0) -> None:
        """After a step: every row holds one more token (fillers stay empty)."""
        self.lengths += 1
        if fillers:
            self.lengths[-fillers:] = 0


def _padded(tensor: torch.Tensor, capacity: int) -> torch.Tensor:
    """``tensor`` (rows × H × T × D) in a buffer of ``capacity`` positions, zeros after T."""
    have = tensor.shape[2]
    if have == capacity:
        return tensor
    if have > capacity:
        return tensor[:, :, :capacity]
    buffer = tensor.new_zeros((*tensor.shape[:2], capacity, tensor.shape[3]))
    buffer[:, :, :have] = tensor
    return buffer
