"""Prefilling prompts, with the KV cache of shared prefixes (system prompt, persona) reused.

Every chat's prompt starts with its system turn: the bot's system prompt, or the chat's
persona. Its keys and values depend only on those tokens and the adapter, so they are computed
once and kept (least recently used first out, within a token budget); a prompt then prefills
only what follows. Its logits do not depend on whether the prefix was cached: a prompt with a
shared prefix is always prefilled in the same two parts, the prefix first.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from bot.engine.batch import Prompt

Pairs = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass
class PrefixStats:
    """How much prefill work the prefix cache has saved so far."""

    hits: int = 0  # prompts whose prefix came from the cache
    misses: int = 0  # prefixes computed (and kept)
    reused_tokens: int = 0  # prompt tokens not prefilled thanks to the cache


class Prefiller:
    """Runs prompt prefills on the engine thread; ``max_tokens`` bounds the cached prefixes."""

    def __init__(
        self, model: Any, device: torch.device, max_tokens: int, threads: int | None = None
    ) -> None:
        self._model = model
        self._device = device
        self._max_tokens = max_tokens
        self._threads = threads
        self._cached: collections.OrderedDict[Hashable, Pairs] = collections.OrderedDict()
        self._tokens = 0
        self.stats = PrefixStats()

    def prefill(self, prompt: Prompt, adapter_key: Hashable) -> tuple[torch.Tensor, DynamicCache]:
        """Next-token logits (1 × vocab) after ``prompt``, and its KV cache (a fresh one).

        ``adapter_key`` names the adapter weights the model runs with now (its LoRA router is
        already set): cached prefixes are only reused under the same weights.
        """
        ids = prompt.ids
        shared = prompt.shared if self._max_tokens and 0 < prompt.shared < len(ids) else 0
        cache = DynamicCache()
        if shared:
            pairs = self._prefix(tuple(ids[:shared]), adapter_key)
            cache = DynamicCache(ddp_cache_data=[(k, v) for k, v in pairs])  # copies on update
        tokens = torch.tensor([ids[shared:]], device=self._device)
        with _torch_threads(self._threads):
            out = self._model(input_ids=tokens, cache=cache, use_cache=True, logits_to_keep=1)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits, out.cache

    def _prefix(self, prefix: tuple[int, ...], adapter_key: Hashable) -> Pairs:
        key = (adapter_key, prefix)
        pairs = self._cached.get(key)
        if pairs is not None:
            self._cached.move_to_end(key)
            self.stats.hits += 1
            self.stats.reused_tokens += len(prefix)
            return pairs
        tokens = torch.tensor([prefix], device=self._device)
        with _torch_threads(self._threads):
            out = self._model(input_ids=tokens, cache=DynamicCache(), logits_to_keep=1)
        pairs = tuple((layer.keys, layer.values) for layer in out.cache.layers)
        self.stats.misses += 1
        if len(prefix) <= self._max_tokens:
            self._cached[key] = pairs
            self._tokens += len(prefix)
            while self._tokens > self._max_tokens:
                _, oldest = self._cached.popitem(last=False)
                self._tokens -= oldest[0][0].shape[2]  # its prefix length
        return pairs


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run a prefill with ``threads`` torch threads, then go back to the decoding count.

    A prompt is compute-bound and no reply streams while it runs, so it can take every core
    (2 cores: 59 → 43 ms for a short prompt); decoding steps keep a core for the event loop.
    """
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
