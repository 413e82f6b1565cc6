"""LoRA adapters of the serving model: the one config, validation, and in-place loading.

Every adapter of a deployment has the shape :func:`lora_config` builds, so any of them (the
first, a newer one, a rollback) goes into the serving model by copying tensors into the same
slot: the base model is never reloaded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file

from bot.errors import LoraError
from bot.settings import LoraSettings

ADAPTER_NAME = "default"
Weights = dict[str, torch.Tensor]


def lora_config(lora: LoraSettings) -> LoraConfig:
    """The deployment's one LoRA shape. Serving and training both build it here, so every
    adapter trained for this deployment hot-swaps into the serving model."""
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


def wrap_lora(model: Any, lora: LoraSettings) -> Any:
    """Wrap ``model`` in a PEFT model with one fresh adapter (B = 0: equals the base exactly)."""
    with warnings.catch_warnings():
        # peft 0.21 probes transformers 5's deprecated `is_gradient_checkpointing` property.
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        return get_peft_model(model, lora_config(lora))


def lora_state(model: Any, adapter_name: str = ADAPTER_NAME) -> Weights:
    """An adapter's tensors by the keys PEFT saves them under (views, not copies)."""
    state: Weights = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return state


def load_weights(model: Any, weights: Weights, *, adapter_name: str = ADAPTER_NAME) -> None:
    """Copy ``weights`` (keys as PEFT saves them) into the model's adapter ``adapter_name``."""
    with torch.no_grad():
        result: Any = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
    if result.unexpected_keys:
        raise LoraError(f"adapter tensors the model lacks: {result.unexpected_keys[:3]}")


def read_lora(path: Path, lora: LoraSettings, shapes: Mapping[str, torch.Size]) -> Weights:
    """Load a PEFT adapter dir's weights after checking it fits the serving model.

    ``shapes`` are the serving adapter's tensor shapes by state-dict key. Raises
    :class:`LoraError` naming what does not fit.
    """
    if not path.is_dir():
        raise LoraError(f"adapter directory {path} does not exist")
    _check_adapter_config(path, lora)
    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise LoraError(f"{path} has no adapter_model.safetensors")
    try:
        weights = load_file(file)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise LoraError(f"cannot read {file}: {exc}") from None
    _check_weights(path, weights, shapes)
    return weights


def _check_adapter_config(path: Path, lora: LoraSettings) -> None:
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise LoraError(f"{path} has no adapter_config.json; it is not a PEFT adapter") from None
    except (OSError, ValueError) as exc:
        raise LoraError(f"cannot read {path / 'adapter_config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise LoraError(f"{path / 'adapter_config.json'} is not a JSON object")
    want = {
        "peft_type": "LORA",
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "target_modules": sorted(lora.target_modules),
        "use_dora": False,
        "use_rslora": False,
    }
    got = dict(config, target_modules=sorted(config.get("target_modules") or []))
    got.update(use_dora=bool(got.get("use_dora")), use_rslora=bool(got.get("use_rslora")))
    diffs = [
        f"{key} {got.get(key)!r} ≠ {value!r}"
        for key, value in want.items()
        if got.get(key) != value
    ]
    if diffs:
        raise LoraError(f"adapter {path} does not fit the serving LoRA config: {'; '.join(diffs)}")


def _check_weights(path: Path, weights: Weights, shapes: Mapping[str, torch.Size]) -> None:
    odd = sorted(weights.keys() ^ shapes.keys())
    if odd:
        raise LoraError(
            f"adapter {path} does not match the model's LoRA layers "
            f"({len(odd)} tensors missing or unexpected, e.g. {odd[0]})"
        )
    for key, shape in shapes.items():
        tensor = weights[key]
        if tensor.shape != shape:
            raise LoraError(
                f"adapter {path}: {key} has shape {tuple(tensor.shape)}, the model needs "
                f"{tuple(shape)} (trained for another base model?)"
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise LoraError(f"adapter {path}: {key} holds non-finite or non-float values")
