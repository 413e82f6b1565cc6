"""The transformers Generator: a causal LM with one LoRA adapter slot, served by a decode engine.

The base model is wrapped once in a peft LoRA adapter built by :func:`lora_config`. Serving
starts from peft's default init (B = 0), which equals the base model exactly; trained adapters
are copied into the same slot in place (never reloading the base), between sequences.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.config import LoraSettings, ModelSettings
from bot.generation import GenerationError
from bot.model_adapter import adapter_state, load_weights, lora_config, read_adapter, wrap_lora
from bot.model_attention import ROWWISE_ATTENTION
from bot.model_batch import EngineRequest
from bot.model_engine import DecodeEngine, EngineStats
from bot.model_source import (
    AdapterError,
    ModelLoadError,
    model_display_name,
    resolve_model,
    transformers_progress,
)
from bot.types import GenerationParams, Turn

__all__ = [
    "AdapterError",
    "ModelLoadError",
    "TransformersGenerator",
    "chat_ids",
    "cpu_bf16_supported",
    "lora_config",
    "pick_device",
    "pick_dtype",
    "read_adapter",
    "resolve_model",
]

log = logging.getLogger(__name__)


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Only then is bf16 faster than float32 (measured: 24 vs 17 tokens/s decoding SmolLM2 on
    AVX512-BF16); elsewhere oneDNN emulates it and it is slower.
    """
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def pick_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelLoadError(f"model.device {name!r} is not a device torch knows: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {name!r} but torch sees no CUDA device")
    return device


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 on CUDA (fp16 on GPUs without bf16) and on bf16-capable CPUs, else fp32."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16_supported() else torch.float32


def chat_ids(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's own chat template."""
    ids = tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=False,
    )
    if isinstance(ids, Mapping):  # some tokenizers return a BatchEncoding regardless
        ids = ids["input_ids"]
    return [int(i) for i in ids]


class _Channel:
    """Carries engine output to one consumer on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    def put(self, item: str | BaseException | None) -> None:
        """Thread-safe; raises RuntimeError once the loop is closed (the engine then cancels)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> str | BaseException | None:
        return await self._queue.get()


class TransformersGenerator:
    """A :class:`bot.generation.Generator` backed by a transformers causal LM and one LoRA slot.

    Build it with :meth:`load`. One engine thread owns the model; ``stream`` calls from any
    number of chats are batched by it (see :mod:`bot.model_engine`).
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
        self._zero = {k: v.detach().clone() for k, v in adapter_state(model).items()}
        self._shapes = {k: v.shape for k, v in self._zero.items()}
        self._active: Path | None = None
        self._swap_lock = asyncio.Lock()
        self._closed = False
        self._engine = DecodeEngine(
            model,
            self._decode,
            stop_ids=_stop_ids(tokenizer, model),
            context_window=self._context_window,
            max_batch_size=settings.max_batch_size,
            device=device,
            min_rows=_min_rows(model, device),
        )
        self._engine.start()

    @classmethod
    async def load(
        cls, settings: ModelSettings, lora: LoraSettings, *, progress: bool = False
    ) -> TransformersGenerator:
        """Resolve, load and wrap the model in a worker thread; the event loop keeps running."""
        return await asyncio.to_thread(cls.load_sync, settings, lora, progress=progress)

    @classmethod
    def load_sync(
        cls, settings: ModelSettings, lora: LoraSettings, *, progress: bool = False
    ) -> TransformersGenerator:
        """Blocking form of :meth:`load` (scripts, benchmarks). Raises ModelLoadError."""
        model_dir = resolve_model(settings, progress=progress)
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        try:
            with transformers_progress(progress):
                tokenizer = AutoTokenizer.from_pretrained(model_dir)
                base: Any = AutoModelForCausalLM.from_pretrained(
                    model_dir, dtype=dtype, attn_implementation=ROWWISE_ATTENTION
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the model from {model_dir}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"{model_dir} has no chat template; selftune needs a chat model")
        try:
            model = wrap_lora(base.to(device), lora)
        except ValueError as exc:
            raise ModelLoadError(f"cannot attach LoRA to {model_dir}: {exc}") from exc
        model.eval()
        log.info("loaded %s from %s on %s as %s", settings.name, model_dir, device, dtype)
        return cls(
            model, tokenizer, settings=settings, lora=lora, model_dir=model_dir, device=device
        )

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def active_adapter(self) -> Path | None:
        """The adapter that requests submitted from now on are served with (None: zero adapter)."""
        return self._active

    @property
    def dtype(self) -> torch.dtype:
        """Precision the weights run in."""
        dtype: torch.dtype = self._model.dtype
        return dtype

    @property
    def stats(self) -> EngineStats:
        """Engine counters: steps, tokens sampled, running and largest batch."""
        return self._engine.stats

    def encode(self, turns: Sequence[Turn]) -> list[int]:
        """The prompt's token ids as the chat template renders it (blocking; any thread)."""
        messages = [{"role": t.role, "content": t.content} for t in turns]
        with self._tokenizer_lock:
            return chat_ids(self._tokenizer, messages, add_generation_prompt=True)

    async def count_tokens(self, turns: Sequence[Turn]) -> int:
        return len(await asyncio.to_thread(self.encode, tuple(turns)))

    async def stream(
        self, turns: Sequence[Turn], params: GenerationParams
    ) -> AsyncGenerator[str, None]:
        """Yield reply text as it is decoded; closing the generator stops generation."""
        if self._closed or not self._engine.alive:
            raise GenerationError("the model has been shut down")
        channel = _Channel(asyncio.get_running_loop())
        frozen = tuple(turns)
        request = EngineRequest(lambda: self.encode(frozen), params, channel.put)
        self._engine.submit(request)  # synchronously: orders it against adapter swaps
        try:
            while (item := await channel.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancel()  # a no-op when finished; stops the engine's work when abandoned

    async def swap_adapter(self, path: Path | None) -> None:
        """Serve with the adapter at ``path`` (None: the zero adapter) from the next request on.

        The adapter is validated first (an :class:`AdapterError` leaves the old one in place);
        the copy happens on the engine thread once the sequences submitted before have finished.
        """
        model = self._model
        async with self._swap_lock:
            if path is None:
                weights = self._zero
            else:
                weights = await asyncio.to_thread(
                    read_adapter, Path(path), self._lora, self._shapes
                )
            previous, self._active = self._active, path
            future = self._engine.call(lambda: load_weights(model, weights))
            try:
                # Shielded: once submitted the swap completes, so active_adapter stays true.
                await asyncio.shield(asyncio.wrap_future(future))
            except Exception:
                self._active = previous
                raise
        log.info("serving adapter %s", path or "none (base model)")

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


def _min_rows(model: Any, device: torch.device) -> int:
    """Rows per decoding step that make a sequence's result independent of the batch.

    Measured on this project's reference CPU: oneDNN's bfloat16 matmul computes a row the same
    for any number of rows but one, so a lone sequence gets one filler row (+17% step time,
    only while it is alone). MKL's float32 kernels differ for 1, 2-3 and 4+ rows; four rows
    for every lone sequence cost too much, and float32 logits rarely tie, so none there.
    """
    return 2 if device.type == "cpu" and model.dtype in (torch.bfloat16, torch.float16) else 1


def _stop_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    """End-of-sequence ids: the generation config's, the tokenizer's, and ChatML's end of turn."""
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return frozenset(ids)
