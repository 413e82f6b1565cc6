"""Fixtures of the llama.cpp engine's tests: offline, one GGUF cache and one adapter per
module, a loaded tiny generator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.ggml.generator import LlamaCppGenerator
from tests.ggml.helpers import loaded, make_adapter


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GGUF cache per module: the tiny model is converted once."""
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "lora", seed=1)


@pytest.fixture
async def generator(tiny_model_dir: Path, cache_dir: Path) -> AsyncIterator[LlamaCppGenerator]:
    async with loaded(tiny_model_dir, cache_dir) as gen:
        yield gen
