"""The transformers Generator: a causal LM with LoRA adapter slots, served by a decode engine.

The base model is wrapped once in a peft LoRA adapter built by :func:`lora_config`. Every slot
starts empty, serving the zero adapter, which equals the base model exactly (and costs no
matmuls). Trained adapters are copied into pooled peft adapters of the same shape (never
reloading the base) and served per batch row (:mod:`bot.engine.slots`): the default slot to
every chat, a second one (e.g. "candidate" for an A/B test) to the requests that ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.engine.attention import BATCHED_ATTENTION, ROWWISE_ATTENTION
from bot.engine.batch import Prompt
from bot.engine.convert import transformers_progress
from bot.engine.core import DecodeEngine, EngineStats
from bot.engine.lora import lora_config, lora_state, read_lora, wrap_lora
from bot.engine.packed import pack_linears, packing_supported
from bot.engine.prefill import PrefixStats
from bot.engine.runtime import (
    cpu_bf16_supported,
    default_threads,
    invariant_rows,
    pick_device,
    pick_dtype,
    stop_token_ids,
)
from bot.engine.slots import SlotTable
from bot.errors import GenerationError, LoraError, ModelLoadError
from bot.generation import DEFAULT_SLOT
from bot.generation.channel import swapped
from bot.generation.inbox import reply_pieces
from bot.generation.source import model_display_name, resolve_model
from bot.generation.template import chat_ids
from bot.settings import LoraSettings, ModelSettings
from bot.types import GenerationParams, Turn, messages

__all__ = [
    "LoraError",
    "ModelLoadError",
    "TransformersGenerator",
    "chat_ids",
    "cpu_bf16_supported",
    "lora_config",
    "pick_device",
    "pick_dtype",
    "read_lora",
    "resolve_model",
]

log = logging.getLogger(__name__)


class TransformersGenerator:
    """A :class:`bot.generation.Generator` backed by a transformers causal LM and LoRA slots.

    Build it with :meth:`load`. One engine thread owns the model; ``stream`` calls from any
    number of chats are batched by it (see :mod:`bot.engine.core`).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        settings: ModelSettings,
        lora: LoraSettings,
        model_dir: Path,
        device: torch.device,
    ) -> None:
        self.model_dir = model_dir  # the resolved weights: training loads the base from here
        self.device = device
        self._model = model
        self._tokenizer = tokenizer
        self._lora = lora
        self._name = model_display_name(settings)
        limit = (
            getattr(model.config, "max_position_embeddings", None) or settings.max_context_tokens
        )
        self._context_window = min(int(limit), settings.max_context_tokens)
        # Rust tokenizers refuse concurrent use ("Already borrowed"): one lock for every call.
        self._tokenizer_lock = threading.Lock()
        self._shapes = {k: v.shape for k, v in lora_state(model).items()}
        self._slots = SlotTable(model, lora)  # owned by the engine thread once it starts
        self._swap_lock = asyncio.Lock()
        self._closed = False
        self._engine = DecodeEngine(
            model,
            self._decode,
            slots=self._slots,
            stop_ids=stop_token_ids(tokenizer, model),
            context_window=self._context_window,
            max_batch_size=settings.max_batch_size,
            device=device,
            min_rows=invariant_rows(model, device) if settings.exact_batching else 1,
            prefix_cache_tokens=settings.prefix_cache_tokens,
            # A prompt may use every core (see model_prefill); decoding keeps one spare.
            prefill_threads=(os.cpu_count() or 1) if device.type == "cpu" else None,
        )
        self._engine.start()

    @classmethod
    async def load(
        cls,
        settings: ModelSettings,
        lora: LoraSettings,
        *,
        progress: bool = False,
    ) -> TransformersGenerator:
        """Resolve, load and wrap the model in a worker thread; the event loop keeps running.

        ``settings.exact_batching``: a sequence decodes to the same tokens whether it runs
        alone or in a batch (see :mod:`bot.engine.attention`; a filler row for a lone bf16
        sequence). Off: no filler row, batched attention also in float32 and on CUDA: faster
        there and for a lone reply, but greedy replies may change with their company.
        """
        return await asyncio.to_thread(cls.load_sync, settings, lora, progress=progress)

    @classmethod
    def load_sync(
        cls,
        settings: ModelSettings,
        lora: LoraSettings,
        *,
        progress: bool = False,
    ) -> TransformersGenerator:
        """Blocking form of :meth:`load` (scripts, benchmarks). Raises ModelLoadError."""
        model_dir = resolve_model(settings, progress=progress)
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        if device.type == "cpu":
            torch.set_num_threads(settings.threads or default_threads())
        try:
            # No bar for loading the converted model (a second or two): the first start's
            # conversion above shows the only one.
            with transformers_progress(False):
                tokenizer = AutoTokenizer.from_pretrained(model_dir)
                base: Any = AutoModelForCausalLM.from_pretrained(
                    model_dir,
                    dtype=dtype,
                    attn_implementation=(
                        ROWWISE_ATTENTION if settings.exact_batching else BATCHED_ATTENTION
                    ),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the model from {model_dir}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"{model_dir} has no chat template; selftune needs a chat model")
        try:
            model = wrap_lora(base.to(device), lora)
            model.eval()
            if settings.pack_weights and packing_supported(model, device):
                pack_linears(model)
            log.info("loaded %s from %s on %s as %s", settings.name, model_dir, device, dtype)
            return cls(
                model,
                tokenizer,
                settings=settings,
                lora=lora,
                model_dir=model_dir,
                device=device,
            )
        except ValueError as exc:
            raise ModelLoadError(f"cannot attach LoRA to {model_dir}: {exc}") from exc

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def active_lora(self) -> Path | None:
        """The default slot's adapter: requests submitted from now on get it (None: zero)."""
        return self._engine.slot_source(DEFAULT_SLOT)

    @property
    def dtype(self) -> torch.dtype:
        """Precision the weights run in."""
        dtype: torch.dtype = self._model.dtype
        return dtype

    @property
    def lora_pool_size(self) -> int:
        """peft adapters allocated for the slots (and for sequences still using older ones)."""
        return self._slots.pool_size

    @property
    def stats(self) -> EngineStats:
        """Engine counters: steps, tokens sampled, running and largest batch."""
        return self._engine.stats

    def encode(self, turns: Sequence[Turn]) -> Prompt:
        """The prompt's token ids as the chat template renders it, and how many of them are
        its leading system turn (a prefix other chats share); blocking, any thread."""
        chat = messages(turns)
        with self._tokenizer_lock:
            ids = chat_ids(self._tokenizer, chat, add_generation_prompt=True)
            if not turns or turns[0].role != "system":
                return Prompt(ids)
            head = chat_ids(self._tokenizer, chat[:1], add_generation_prompt=False)
        # Templates that render the system turn differently in context share nothing.
        return Prompt(ids, len(head) if ids[: len(head)] == head else 0)

    async def count_tokens(self, turns: Sequence[Turn]) -> int:
        try:
            return len(await asyncio.to_thread(self._chat_ids, messages(turns)))
        except Exception as exc:  # the chat template's own errors (jinja, ValueError, …)
            raise GenerationError(
                f"cannot render the prompt ({type(exc).__name__}: {exc})"
            ) from exc

    def _chat_ids(self, chat: list[dict[str, str]]) -> list[int]:
        with self._tokenizer_lock:
            return chat_ids(self._tokenizer, chat, add_generation_prompt=True)

    @property
    def prefix_stats(self) -> PrefixStats:
        """Prompt prefixes (system turns) reused from the cache, and computed."""
        return self._engine.prefix_stats

    def slot_lora(self, slot: str) -> Path | None:
        """The adapter the next ``stream(slot=slot)`` is served with (None: the zero adapter,
        or a slot never filled): requests are bound to their slot's adapter when submitted."""
        return self._engine.slot_source(slot)

    async def stream(
        self, turns: Sequence[Turn], params: GenerationParams, *, slot: str = DEFAULT_SLOT
    ) -> AsyncGenerator[str, None]:
        """Yield reply text as it is decoded, with the adapter in ``slot`` (an empty slot: the
        zero adapter); closing the generator stops generation."""
        if self._closed or not self._engine.alive:
            raise GenerationError("the model has been shut down")
        frozen = tuple(turns)
        # Bound to the adapter slot_lora(slot) names now; tokenized on the engine thread.
        pieces = reply_pieces(self._engine.submit, lambda: self.encode(frozen), params, slot)
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                yield piece

    async def swap_lora(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        """Serve ``slot`` with the adapter at ``path`` (None: the zero adapter, i.e. an empty
        slot) from the next request on; running sequences finish with the one they started with.

        The adapter is validated first (an :class:`LoraError` leaves the slot as it was); the
        copy happens on the engine thread between two decoding steps.
        """
        async with self._swap_lock:
            weights = None
            if path is not None:
                weights = await asyncio.to_thread(read_lora, Path(path), self._lora, self._shapes)
            # slot_lora names it once served
            await swapped(self._engine.swap(slot, weights, path), path)
        log.info("slot %s serves adapter %s", slot, path or "none (base model)")

    async def aclose(self) -> None:
        """Stop the engine thread; running and queued streams end with a GenerationError."""
        self._closed = True
        await asyncio.to_thread(self._engine.stop)

    def _decode(self, ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            text: str = self._tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        return text
