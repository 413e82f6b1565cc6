"""Batch state of the decode engine: per-sequence sampling and text, and the shared KV cache.

A sequence decoded in a batch computes what it computes alone: the prompt is prefilled alone,
each row's keys start at position 0 of the cache (:mod:`bot.engine.kv_cache`), padded positions are
masked out and position ids count only real tokens, attention is batch-invariant
(:mod:`bot.engine.attention`), and filler rows keep the matrix kernels on one code path
(:class:`Batch`). The cache layout assumes full-attention layers (Llama, SmolLM2, Qwen2 and
the like), not sliding windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import (
    DynamicCache,
    DynamicLayer,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bot.engine.kv_cache import RowCache
from bot.engine.slots import LoraRouter
from bot.generation.channel import ReplyOut
from bot.generation.inbox import Request
from bot.types import GenerationParams

Decode = Callable[[Sequence[int]], str]
"""Gets text pieces, then None at the end (or an exception instead); runs on the engine thread."""


@dataclass(frozen=True)
class Prompt:
    """A prompt's token ids; the first ``shared`` of them (its system turn) are a prefix that
    other prompts share, whose KV cache is reused (:mod:`bot.engine.prefill`)."""

    ids: list[int]
    shared: int = 0


EngineRequest = Request[Prompt]


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces without splitting a character.

    Decodes a small window (the last emitted piece plus new tokens) and holds text back while
    it ends in U+FFFD, i.e. while a multi-byte character is still incomplete. Decoding with the
    previous piece as context keeps word-initial spaces right for SentencePiece tokenizers.
    The pieces concatenate to the decode of all ids.
    """

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start: the last emitted piece begins here
        self._read = 0  # everything before this has been emitted

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token)
        return self._emit(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (an incomplete character decodes as U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if not final and (len(text) <= len(before) or text.endswith("\ufffd")):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before) :]


def _processors(params: GenerationParams) -> LogitsProcessorList:
    # transformers' own processors, in generate()'s order; greedy still honours the penalty.
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.greedy:
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            procs.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(params.top_p))
    return procs


class SequenceState:
    """Sampling and text state of one request."""

    def __init__(
        self, request: EngineRequest, prompt_ids: list[int], limit: int, decode: Decode
    ) -> None:
        self.request = request
        self.adapter: str | None = None  # the pooled peft adapter it decodes with (None: none)
        self.out = ReplyOut(request, prompt_ids, limit, IncrementalDecoder(decode))
        self.pending = -1  # the last sampled token, fed to the model in the next step
        self.processors = _processors(request.params)
        self.rng: torch.Generator | None = None
        if not request.params.greedy:
            self.rng = torch.Generator()  # sampling runs on the CPU, whatever the model's device
            if request.params.seed is None:
                self.rng.seed()
            else:
                self.rng.manual_seed(request.params.seed)

    @property
    def tokens(self) -> list[int]:
        """Prompt + reply so far: the repetition penalty sees both."""
        return self.out.tokens

    def advance(self, logits: torch.Tensor, stop_ids: frozenset[int]) -> bool:
        """Sample the next token from float CPU ``logits`` (1 × vocab); return whether done."""
        scores = logits
        if self.processors:
            ids = cast(torch.LongTensor, torch.tensor([self.tokens], device=logits.device))
            scores = self.processors(ids, logits)
        if self.rng is None:
            token = int(scores.argmax(dim=-1))
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.rng))
        self.pending = token  # a stop token ends the sequence: it is never fed
        return self.out.take(token, stop_ids)

    def finish(self) -> None:
        self.out.finish()


class Batch:
    """The running sequences and their KV cache (:class:`bot.engine.kv_cache.RowCache`).

    With fewer than ``min_rows`` sequences, filler rows (their output discarded) make up the
    difference in every forward pass: some BLAS kernels compute a matrix row differently when
    there are fewer rows (oneDNN bfloat16: only a single row; MKL float32: 1, 2-3 and 4+ rows
    each differently), and a sequence must decode the same whether it runs alone or not.
    """

    def __init__(self, min_rows: int, router: LoraRouter) -> None:
        self.min_rows = min_rows
        self.router = router
        self.rows: list[SequenceState] = []
        self.cache: RowCache | None = None
        self._fillers = 0  # filler rows, after the real ones in the cache

    def reset(self) -> None:
        self.rows, self.cache, self._fillers = [], None, 0

    def join(self, seq: SequenceState, cache: DynamicCache, length: int) -> None:
        """Add a prefilled sequence whose cache holds ``length`` tokens."""
        joined = RowCache.from_prefill(_kv(cache), length)
        self._set_fillers(0)
        self.cache = joined if self.cache is None else self.cache.append(joined)
        self.rows.append(seq)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` (and as much cache as the longest of them needs)."""
        if len(indices) == len(self.rows):
            return
        if not indices or self.cache is None:
            self.reset()
            return
        self._set_fillers(0)
        self.rows = [self.rows[i] for i in indices]
        self.cache = self.cache.select(indices)

    def step(self, model: Any) -> torch.Tensor:
        """Feed every row's pending token; return next-token logits (rows × vocab)."""
        assert self.cache is not None
        self._set_fillers(max(0, self.min_rows - len(self.rows)))
        cache = self.cache
        pending = [seq.pending for seq in self.rows] + [0] * self._fillers
        tokens = torch.tensor(pending, device=cache.lengths.device).unsqueeze(1)
        positions = cache.lengths.unsqueeze(1)  # a row's tokens so far: padding never counts
        mask = cache.step_mask()
        self.router.route([seq.adapter for seq in self.rows], len(pending))
        out = model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions.clone(),
            cache=cache,
            use_cache=True,
        )
        cache.advance(self._fillers)
        logits: torch.Tensor = out.logits[: len(self.rows), -1, :]
        return logits

    def _set_fillers(self, count: int) -> None:
        """Resize the filler rows; a filler holds nothing and attends only to itself."""
        if count == self._fillers or self.cache is None:
            return
        real = len(self.rows)
        cache = self.cache if self._fillers == 0 else self.cache.select(range(real))
        self.cache = cache.with_empty_rows(count)
        self._fillers = count


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values), batch × heads × tokens × dim."""
    pairs = []
    for layer in cache.layers:
        # Joining and trimming rows is only right for plain full-attention layers.
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"unsupported KV cache layer {type(layer).__name__}")
        pairs.append((layer.keys, layer.values))
    return pairs
