"""Prompts in and text out with the model's own transformers tokenizer, without torch.

The llama.cpp engine only sees token ids: prompts are rendered by the chat template and
tokenized exactly as the torch engine does (same tokenizer files, same ``apply_chat_template``
call), and it stops on the same ids. ``PreTrainedTokenizerFast`` loads the tokenizer without
importing torch (``AutoTokenizer`` would). Replies are detokenized incrementally with
``tokenizers``' own ``DecodeStream``, which holds a piece back while it is an incomplete
UTF-8 character.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# The tokenizer class alone, which does not import torch (tests/test_layers.py allows it here).
from transformers import PreTrainedTokenizerFast  # noqa: TID251

from bot.errors import GenerationError, ModelLoadError
from bot.generation.template import chat_ids, stop_ids
from bot.types import Turn, messages


@dataclass(frozen=True)
class Prompt:
    """A prompt's token ids; the first ``shared`` of them (its system turn) may be shared."""

    ids: list[int]
    shared: int = 0


class ChatText:
    """A chat model's tokenizer and chat template, safe to call from any thread."""

    def __init__(self, tokenizer: Any, stop_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self.stop_ids = stop_ids
        # Rust tokenizers refuse concurrent use ("Already borrowed"): one lock for every call.
        self._lock = threading.Lock()
        # Replies are detokenized by a copy of their own, so the engine thread's per-token
        # decoding never waits behind a chat template rendering for count_tokens.
        self._stream_backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._stream_lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: Path) -> ChatText:
        """Read the tokenizer of ``model_dir`` (blocking). Raises ModelLoadError."""
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"{model_dir} has no chat template; selftune needs a chat model")
        return cls(tokenizer, config_stop_ids(tokenizer, model_dir))

    def encode(self, turns: Sequence[Turn]) -> list[int]:
        """The prompt's ids with the generation prompt; GenerationError if it cannot render."""
        try:
            with self._lock:
                return chat_ids(self._tokenizer, messages(turns), add_generation_prompt=True)
        except Exception as exc:  # the chat template's own errors (jinja, ValueError, …)
            raise GenerationError(
                f"cannot render the prompt ({type(exc).__name__}: {exc})"
            ) from exc

    def prompt(self, turns: Sequence[Turn]) -> Prompt:
        """The prompt's ids, and how many of them are its leading system turn (a prefix other
        chats share), as the torch engine finds it; GenerationError if it cannot render."""
        chat = messages(turns)
        try:
            with self._lock:
                ids = chat_ids(self._tokenizer, chat, add_generation_prompt=True)
                if not turns or turns[0].role != "system":
                    return Prompt(ids)
                head = chat_ids(self._tokenizer, chat[:1], add_generation_prompt=False)
        except Exception as exc:  # the chat template's own errors (jinja, ValueError, …)
            raise GenerationError(
                f"cannot render the prompt ({type(exc).__name__}: {exc})"
            ) from exc
        # Templates that render the system turn differently in context share nothing.
        return Prompt(ids, len(head) if ids[: len(head)] == head else 0)

    def decoder(self) -> TextStream:
        """A fresh incremental decoder for one reply."""
        return TextStream(self._stream_backend, self._stream_lock)


class TextStream:
    """One reply's text, piece by piece; never splits a character."""

    def __init__(self, backend: Any, lock: threading.Lock) -> None:
        self._backend = backend
        self._lock = lock
        self._stream = DecodeStream(skip_special_tokens=True)
        self._ids: list[int] = []
        self._sent = 0  # characters handed out so far
        self._held = 0  # tokens pushed since the last piece: text may be held back

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token)
        with self._lock:
            piece = self._stream.step(self._backend, token) or ""
        self._sent += len(piece)
        self._held = 0 if piece else self._held + 1
        return piece

    def flush(self) -> str:
        """The text still held back at the end of the reply (an incomplete character decodes
        as U+FFFD), as the torch engine's stream ends."""
        if not self._held:  # every token's text is out already
            return ""
        self._held = 0
        with self._lock:
            text = str(self._backend.decode(self._ids, skip_special_tokens=True))
        rest = text[self._sent :]
        self._sent = len(text)
        return rest


def config_stop_ids(tokenizer: Any, model_dir: Path) -> frozenset[int]:
    """End-of-sequence ids as the torch engine has them, with the generation config read from
    ``model_dir`` as transformers reads it: generation_config.json, else config.json."""
    for name in ("generation_config.json", "config.json"):
        config = model_dir / name
        if config.is_file():
            return stop_ids(tokenizer, _json(config).get("eos_token_id"))
    return stop_ids(tokenizer, None)


def _json(path: Path) -> dict[str, Any]:
    """A model config file as a JSON object; ModelLoadError if it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return value
