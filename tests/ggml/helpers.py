"""Helpers for the llama.cpp engine's tests: the tiny model's settings, a loaded generator,
a random adapter, replies and polling."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from bot.engine.lora import wrap_lora
from bot.ggml.generator import LlamaCppGenerator
from bot.settings import LoraSettings, ModelSettings


def make_adapter(model_dir: Path, out: Path, *, seed: int) -> Path:
    """A PEFT adapter of the deployment's shape (LoraSettings) with random B matrices."""
    torch.manual_seed(seed)
    model = wrap_lora(AutoModelForCausalLM.from_pretrained(model_dir), LoraSettings())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    model.save_pretrained(out)
    return out


def tiny_settings(model_dir: Path, cache_dir: Path, **overrides: Any) -> ModelSettings:
    values: dict[str, Any] = {
        "engine": "llama.cpp",
        "gguf_weights": "f32",
        "max_batch_size": 16,
        "kv_cache_tokens": 4096,
        "cache_dir": cache_dir,
        **overrides,
    }
    return ModelSettings(name=str(model_dir), **values)


@contextlib.asynccontextmanager
async def loaded(
    model_dir: Path, cache_dir: Path, **overrides: Any
) -> AsyncIterator[LlamaCppGenerator]:
    settings = tiny_settings(model_dir, cache_dir, **overrides)
    gen = await LlamaCppGenerator.load(settings, LoraSettings())
    try:
        yield gen
    finally:
        await gen.aclose()
