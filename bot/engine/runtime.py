"""Device, precision and tokenizer helpers shared by serving (bot.engine.generator) and training."""

from __future__ import annotations

import os
from typing import Any

import torch

from bot.errors import ModelLoadError
from bot.generation.template import stop_ids


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Only then is bf16 faster than float32 (measured: 24 vs 17 tokens/s decoding SmolLM2 on
    AVX512-BF16); elsewhere oneDNN emulates it and it is slower.
    """
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def default_threads() -> int:
    """Torch threads when ``model.threads`` is unset: every core but one.

    The spare core runs the event loop (chats, storage, tokenizing). Measured on 2 cores: with
    both given to torch, each wake-up of the event loop stalls a parallel region of the decode
    step, and one reply decoded at 13-23 tokens/s depending on what else ran; with one thread,
    a steady 21 (and 16 replies together: 97-147 vs 129-149 tokens/s).
    """
    return max(1, (os.cpu_count() or 1) - 1)


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


def invariant_rows(model: Any, device: torch.device) -> int:
    """Rows per decoding step that make a sequence's result independent of the batch.

    Measured on this project's reference CPU: oneDNN's bfloat16 matmul computes a row the same
    for any number of rows but one, so a lone sequence gets one filler row (SmolLM2: 44 instead
    of 38 ms per step, only while it is alone). MKL's float32 kernels differ for 1, 2-3 and 4+
    rows; four rows for every lone sequence cost too much, and float32 logits rarely tie (the
    differences are ~1e-6), so none there.
    """
    return 2 if device.type == "cpu" and model.dtype in (torch.bfloat16, torch.float16) else 1


def stop_token_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    """End-of-sequence ids: the generation config's, the tokenizer's, and ChatML's end of turn."""
    return stop_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
