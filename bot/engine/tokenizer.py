"""A local model's tokenizer and context window, without its weights.

A remote backend (:mod:`bot.generation.openai_api`) still fits prompts to the context window by
tokens; with the same model configured locally (``model.name``), its chat template counts
them exactly as the server will.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from bot.errors import ModelLoadError
from bot.generation.template import chat_ids
from bot.types import Turn, messages


class ChatTokenizer:
    """Counts the tokens of a chat prompt as the model's own chat template renders it."""

    def __init__(self, tokenizer: Any, max_positions: int | None) -> None:
        self._tokenizer = tokenizer
        self.max_positions = max_positions  # the model's context length, if its config says
        # Rust tokenizers refuse concurrent use ("Already borrowed"): one lock for every call.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: Path) -> ChatTokenizer:
        """Read the tokenizer and config.json of ``model_dir`` (blocking). Raises ModelLoadError."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            config = json.loads((model_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"{model_dir} has no chat template; selftune needs a chat model")
        positions = config.get("max_position_embeddings")
        return cls(tokenizer, int(positions) if positions else None)

    def count(self, turns: Sequence[Turn]) -> int:
        """Prompt tokens of ``turns`` with the generation prompt (blocking; any thread)."""
        with self._lock:
            return len(chat_ids(self._tokenizer, messages(turns), add_generation_prompt=True))
