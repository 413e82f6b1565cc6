"""The tiny test model for llama.cpp: its transformers directory, its GGUF, and a LoRA GGUF.

The model is :mod:`tests.support.tinymodel`'s (2 layers, 4 heads over 2 KV heads, a tied
embedding); the adapter a random PEFT LoRA on it (non-zero ``B``, so it changes the logits).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM

from bot.ggml.convert import LINEAR, Dtype, lora_gguf, model_gguf
from tests.support.tinymodel import build_tiny_model


@dataclass(frozen=True)
class TinyGguf:
    """A tiny model in both forms and a LoRA adapter of it in both forms."""

    model_dir: Path  # transformers: safetensors, config, tokenizer
    model: Path  # its GGUF
    adapter_dir: Path  # PEFT: adapter_config.json, adapter_model.safetensors
    lora: Path  # its GGUF


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """peft probes transformers 5's deprecated ``is_gradient_checkpointing`` (a FutureWarning,
    an error under the suite's warning filter) when it wraps a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        yield


def save_random_lora(
    model_dir: Path,
    out: Path,
    *,
    targets: Sequence[str] = LINEAR,
    r: int = 4,
    alpha: int = 8,
    use_rslora: bool = False,
    seed: int = 1,
    scale: float = 0.5,
) -> Path:
    """A PEFT LoRA of the model at ``model_dir`` on ``targets`` with random A and B (PEFT
    starts B at zero, which would change nothing), saved to ``out``."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(targets),
        use_rslora=use_rslora,
        task_type=TaskType.CAUSAL_LM,
    )
    with peft_quietly():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    model.save_pretrained(str(out))
    return out


def build_tiny_gguf(root: Path, *, dtype: Dtype = "f32", seed: int = 0) -> TinyGguf:
    """Under ``root``: the tiny model (``model/``), its GGUF (``model.gguf``), a random r=4
    LoRA on every linear layer (``lora/``) and its GGUF (``lora.gguf``)."""
    model_dir = build_tiny_model(root / "model", seed=seed)
    adapter_dir = save_random_lora(model_dir, root / "lora")
    return TinyGguf(
        model_dir=model_dir,
        model=model_gguf(model_dir, root / "model.gguf", dtype=dtype),
        adapter_dir=adapter_dir,
        lora=lora_gguf(adapter_dir, root / "lora.gguf"),
    )
