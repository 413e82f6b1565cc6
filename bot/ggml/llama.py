"""The few llama.cpp C calls the engine makes, through llama-cpp-python's ctypes bindings.

Every object here belongs to the engine thread (llama.cpp contexts are not thread-safe); the
bindings release the GIL while C runs, so the event loop keeps going during ``llama_decode``.
llama.cpp's own log lines go to this module's logger (debug; warnings and errors as such).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from bot.errors import GenerationError, LoraError, ModelLoadError

log = logging.getLogger(__name__)

_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level: 1 debug, 2 info, 5 cont
_init_lock = threading.Lock()
_initialized = False


# With a unified KV cache llama.cpp compares the whole cache to the trained context and warns;
# no row ever reaches past the context window (the engine caps it), so it is noise. The GGUF's
# vocabulary is a placeholder on purpose (token ids only, bot/ggml/convert.py): also noise.
_NOISE = ("possible training context overflow", "dummy tokens")


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log(level: int, text: bytes | None, _user: Any) -> None:
    if text:
        line = text.decode(errors="replace").rstrip()
        noise = any(part in line for part in _NOISE)
        log.log(logging.DEBUG if noise else _LEVELS.get(level, logging.DEBUG), "%s", line)


def init_backend() -> None:
    """Load ggml's backends and route llama.cpp's logs once per process."""
    global _initialized
    with _init_lock:
        if not _initialized:
            llama_cpp.llama_log_set(_log, ctypes.c_void_p())
            llama_cpp.llama_backend_init()
            _initialized = True


class Model:
    """A GGUF model's weights, shared (read-only) by every context."""

    def __init__(self, path: Path) -> None:
        init_backend()
        params = llama_cpp.llama_model_default_params()
        params.use_mmap = True
        handle = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not handle:
            raise ModelLoadError(f"llama.cpp cannot load {path} (see the log for why)")
        self.handle: Any = handle
        vocab = llama_cpp.llama_model_get_vocab(handle)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(handle))

    def free(self) -> None:
        if self.handle:
            llama_cpp.llama_model_free(self.handle)
            self.handle = None


class Adapter:
    """A LoRA adapter (GGUF) loaded for ``model``; contexts apply it at scale 1."""

    def __init__(self, model: Model, path: Path) -> None:
        handle = llama_cpp.llama_adapter_lora_init(model.handle, str(path).encode())
        if not handle:
            raise LoraError(f"llama.cpp cannot load the adapter {path} (see the log for why)")
        self.path = path
        self.handle: Any = handle

    def free(self) -> None:
        if self.handle:
            llama_cpp.llama_adapter_lora_free(self.handle)
            self.handle = None


@dataclass(frozen=True)
class ContextShape:
    """How a context is sized: KV cells shared by its rows, rows, tokens per decode call,
    and the prompt prefixes (system turns) it keeps: their number and most tokens in all."""

    kv_tokens: int
    max_rows: int
    batch_tokens: int
    threads: int
    prefixes: int = 0
    prefix_tokens: int = 0
    # the thread counts the engine's tuner picks from per step (bot.ggml.threads); () = threads
    thread_choices: tuple[int, ...] = ()


class Context:
    """A llama.cpp context: one KV cache (rows share its cells) and an optional adapter."""

    def __init__(self, model: Model, shape: ContextShape, adapter: Adapter | None) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.kv_tokens
        params.n_batch = params.n_ubatch = shape.batch_tokens
        params.n_seq_max = shape.max_rows + shape.prefixes  # a prefix has a seq_id too
        params.n_threads = params.n_threads_batch = shape.threads
        # One pool of cells for every row (they take cells as they need them, see the engine's
        # budget). A stream per row (kv_unified off) lets attention read only the row's cells,
        # 1.3-1.65x faster for 16 rows that start and end together, but llama.cpp then splits a
        # step into one graph run per run of consecutive seq_ids: once replies end at different
        # times, 16 chat replies took 5.2 s instead of 1.7 s (measured, SmolLM2 bf16).
        params.kv_unified = True
        params.no_perf = True
        handle = llama_cpp.llama_init_from_model(model.handle, params)
        if not handle:
            raise GenerationError(
                f"llama.cpp cannot create a context of {shape.kv_tokens} KV cells for "
                f"{params.n_seq_max} sequences (model.kv_cache_tokens, model.max_batch_size; "
                "see the log for why)"
            )
        self.handle: Any = handle
        self.n_vocab = model.n_vocab
        self.capacity = int(llama_cpp.llama_n_ctx(handle))
        self.threads = shape.threads
        self._memory = llama_cpp.llama_get_memory(handle)
        if adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter.handle)
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(handle, adapters, 1, scales) != 0:
                self.free()
                raise LoraError(f"llama.cpp cannot apply the adapter {adapter.path}")

    def decode(self, batch: Batch) -> None:
        """Run the batch; raises GenerationError (the KV cache is as before, or the failed
        rows must be dropped by the caller)."""
        code = llama_cpp.llama_decode(self.handle, batch.raw)
        if code != 0:
            reason = "the KV cache is full" if code == 1 else f"llama_decode returned {code}"
            raise GenerationError(f"the model failed to generate ({reason})")

    def use_threads(self, threads: int) -> None:
        """Decode with ``threads`` threads from the next step on."""
        if threads != self.threads:
            llama_cpp.llama_set_n_threads(self.handle, threads, threads)
            self.threads = threads

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """Next-token logits of batch entry ``index``: a view valid until the next decode."""
        pointer = llama_cpp.llama_get_logits_ith(self.handle, index)
        if not pointer:
            raise GenerationError(f"llama.cpp has no logits for batch entry {index}")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def share(self, source: int, target: int, length: int) -> None:
        """Give row ``target`` the first ``length`` KV cells of row ``source`` (the unified cache
        tags the same cells with both rows: nothing is copied)."""
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, 0, length)

    def forget(self, seq_id: int) -> None:
        """Free a row's KV cells."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def free(self) -> None:
        if self.handle:
            llama_cpp.llama_free(self.handle)
            self.handle = None


class Batch:
    """A reusable ``llama_batch`` of token ids, each with its position, row and output flag."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.raw.n_tokens = 0

    def clear(self) -> None:
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, *, output: bool) -> int:
        """Append one token; returns its index (for :meth:`Context.logits`)."""
        i = int(self.raw.n_tokens)
        if i >= self.capacity:
            raise ValueError("the batch is full")
        self.raw.token[i] = token
        self.raw.pos[i] = pos
        self.raw.n_seq_id[i] = 1
        self.raw.seq_id[i][0] = seq_id
        self.raw.logits[i] = output
        self.raw.n_tokens = i + 1
        return i

    @property
    def size(self) -> int:
        return int(self.raw.n_tokens)

    def free(self) -> None:
        if self.capacity:
            llama_cpp.llama_batch_free(self.raw)
            self.capacity = 0
