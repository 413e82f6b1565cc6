"""The llama.cpp Generator: the transformers model served by llama.cpp (ggml) in this process.

The model directory is the same as the torch engine's (training reads the base from it); its
GGUF is written once next to the other converted models (``model.cache_dir``), and each LoRA
adapter's GGUF once per adapter directory. Prompts and text go through the model's own
transformers tokenizer and chat template (:mod:`bot.ggml.text`), decoding through
:class:`bot.ggml.engine.LlamaEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from bot.errors import GenerationError, LoraError, ModelLoadError
from bot.generation import DEFAULT_SLOT
from bot.generation.channel import swapped
from bot.generation.inbox import reply_pieces
from bot.generation.source import model_display_name, resolve_model
from bot.ggml import convert
from bot.ggml.engine import EngineStats, LlamaEngine
from bot.ggml.llama import ContextShape, Model
from bot.ggml.text import ChatText
from bot.ggml.threads import thread_choices, usable_cores
from bot.settings import LoraSettings, ModelSettings
from bot.types import GenerationParams, Turn

log = logging.getLogger(__name__)

BATCH_TOKENS = 512
"""Most tokens one llama_decode takes: every running row's next token plus prompt chunks.
A long prompt is read in chunks of what is left, so running replies wait at most one chunk."""


PREFIXES = 8
"""System turns (the default prompt, personas) each context keeps computed, oldest unused
evicted first; ``model.prefix_cache_tokens`` caps their tokens."""


class LlamaCppGenerator:
    """A :class:`bot.generation.Generator` on llama.cpp; build it with :meth:`load`."""

    def __init__(
        self, model: Model, text: ChatText, *, settings: ModelSettings, model_dir: Path
    ) -> None:
        self.model_dir = model_dir  # the transformers weights: training loads the base here
        self._text = text
        self._name = model_display_name(settings)
        self._cache = settings.cache_dir
        window = min(model.n_ctx_train or 1 << 30, settings.max_context_tokens)
        self._swap_lock = asyncio.Lock()
        self._closed = False
        choices = thread_choices(settings.threads, usable_cores())
        shape = ContextShape(
            kv_tokens=settings.kv_cache_tokens,
            max_rows=settings.max_batch_size,
            batch_tokens=max(BATCH_TOKENS, settings.max_batch_size),
            threads=max(choices),
            thread_choices=choices,
            prefixes=PREFIXES if settings.prefix_cache_tokens else 0,
            prefix_tokens=settings.prefix_cache_tokens,
        )
        self._engine = LlamaEngine(model, text, shape, context_window=window)
        self._engine.start()  # ModelLoadError (the model freed) if no context can be made
        self._context_window = self._engine.context_window  # what one context holds, at most

    @classmethod
    async def load(
        cls, settings: ModelSettings, lora: LoraSettings, *, progress: bool = False
    ) -> LlamaCppGenerator:
        """Resolve the model, write its GGUF if needed and load it, in a worker thread."""
        return await asyncio.to_thread(cls.load_sync, settings, lora, progress=progress)

    @classmethod
    def load_sync(
        cls, settings: ModelSettings, lora: LoraSettings, *, progress: bool = False
    ) -> LlamaCppGenerator:
        """Blocking form of :meth:`load` (scripts, benchmarks). Raises ModelLoadError."""
        del lora  # adapters come as GGUF files converted from their own config
        if settings.device.startswith("cuda"):
            raise ModelLoadError(
                f"model.engine 'llama.cpp' runs on the CPU here (this llama.cpp build has no "
                f"CUDA), but model.device is {settings.device!r}: set it to 'cpu' or 'auto', or "
                "use model.engine 'transformers'"
            )
        model_dir = resolve_model(settings, progress=progress)
        text = ChatText.load(model_dir)
        gguf = model_gguf_path(settings, model_dir)
        try:
            gguf.parent.mkdir(parents=True, exist_ok=True)
            convert.model_gguf(model_dir, gguf, dtype=settings.gguf_weights)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot write a GGUF of {model_dir}: {exc}") from exc
        model = Model(gguf)
        log.info(
            "loaded %s from %s with llama.cpp (%s)", settings.name, gguf, settings.gguf_weights
        )
        return cls(model, text, settings=settings, model_dir=model_dir)

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def context_window(self) -> int:
        """The model's window, capped at one context's KV cells (``model.kv_cache_tokens``),
        so that the chat trims history to what can be served."""
        return self._context_window

    @property
    def active_lora(self) -> Path | None:
        """The default slot's adapter: requests submitted from now on get it (None: zero)."""
        return self._engine.slot_source(DEFAULT_SLOT)

    @property
    def stats(self) -> EngineStats:
        """Engine counters: steps, tokens sampled, running and largest batch, contexts."""
        return self._engine.stats

    async def count_tokens(self, turns: Sequence[Turn]) -> int:
        return len(await asyncio.to_thread(self._text.encode, turns))

    def slot_lora(self, slot: str) -> Path | None:
        """The adapter the next ``stream(slot=slot)`` is served with (None: the base model, or
        an empty slot): requests are bound to their slot's adapter when submitted."""
        return self._engine.slot_source(slot)

    async def stream(
        self, turns: Sequence[Turn], params: GenerationParams, *, slot: str = DEFAULT_SLOT
    ) -> AsyncGenerator[str, None]:
        """Yield reply text as it is decoded, with the adapter in ``slot``; closing the
        generator stops generation."""
        if self._closed or not self._engine.alive:
            raise GenerationError("the model has been shut down")
        frozen = tuple(turns)
        # Bound to the adapter slot_lora(slot) names now; tokenized on the engine thread.
        pieces = reply_pieces(self._engine.submit, lambda: self._text.prompt(frozen), params, slot)
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                yield piece

    async def swap_lora(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        """Serve ``slot`` with the PEFT adapter at ``path`` from the next request on (None: the
        base model; a slot other than the default is emptied, freeing its context); running
        and queued requests finish with the adapter they were submitted with.

        The adapter is converted to GGUF in a worker thread (once per adapter directory), then
        loaded and its context created between two decoding steps; only then does the slot
        change. Any failure is a LoraError and leaves the slot as it was.
        """
        async with self._swap_lock:
            gguf = None if path is None else await self._convert(Path(path))
            await swapped(self._engine.swap(slot, gguf, path), path)
        log.info("slot %s serves adapter %s", slot, path or "none (base model)")

    async def _convert(self, adapter_dir: Path) -> Path:
        try:
            return await asyncio.to_thread(self._lora_gguf, adapter_dir)
        except LoraError:
            raise
        except Exception as exc:  # a conversion bug or a malformed file it did not foresee
            log.exception("converting the adapter %s failed", adapter_dir)
            raise LoraError(f"cannot convert the adapter {adapter_dir}: {exc}") from exc

    def _lora_gguf(self, adapter_dir: Path) -> Path:
        # Converted once per adapter directory (lora_gguf skips a GGUF newer than the adapter).
        out = self._cache / "gguf-lora" / f"{_digest(adapter_dir)}.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
        return convert.lora_gguf(adapter_dir, out, base_dir=self.model_dir)

    async def aclose(self) -> None:
        """Stop the engine and free the model, contexts and adapters; running and queued
        streams end with a GenerationError."""
        self._closed = True
        await asyncio.to_thread(self._engine.stop)


def model_gguf_path(settings: ModelSettings, model_dir: Path) -> Path:
    """Where the GGUF of ``model_dir`` at the configured precision is cached."""
    name = f"{model_dir.name}-{_digest(model_dir)}-{settings.gguf_weights}.gguf"
    return settings.cache_dir / "gguf" / name


def _digest(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
