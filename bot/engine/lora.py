"""LoRA adapters of the serving model: the one config, validation, and in-place loading.

Every adapter of a deployment has the shape :func:`lora_config` builds, so any of them (the
first, a newer one, a rollback) goes into the serving model by copying tensors into the same
slot: the base model is never reloaded. An adapter trained under an earlier, smaller shape (a
lower rank, fewer target modules: the defaults before r16 on every linear layer) is fitted into
the slot exactly (:func:`fit_weights`), so upgrading keeps every version servable.
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
    config = _check_adapter_config(path, lora)
    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise LoraError(f"{path} has no adapter_model.safetensors")
    try:
        weights = load_file(file)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise LoraError(f"cannot read {file}: {exc}") from None
    weights = fit_weights(weights, config, lora, shapes)
    _check_weights(path, weights, shapes)
    return weights


def fit_weights(
    weights: Weights,
    config: Mapping[str, Any],
    lora: LoraSettings,
    shapes: Mapping[str, torch.Size],
) -> Weights:
    """An adapter of a smaller shape as the slot's shape, computing exactly the same update.

    A rank-``r`` adapter's ``A`` gains zero rows and its ``B`` zero columns up to the slot's
    rank (the extra rank adds exactly zero), ``B`` is rescaled from its ``alpha / r`` to the
    slot's (a factor of 1 when both keep ``alpha = 2 r``, as the defaults do), and the modules
    it never targeted get zeros. Weights of the slot's own shape pass through untouched.
    """
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    targets = set(config.get("target_modules") or [])
    if rank == lora.r and alpha == lora.alpha and targets == set(lora.target_modules):
        return weights
    factor = (alpha / rank) / (lora.alpha / lora.r)
    fitted: Weights = {}
    for key, shape in shapes.items():
        tensor = weights.get(key)
        if tensor is None:
            if _module(key) not in targets:  # never trained: its update is zero
                fitted[key] = torch.zeros(shape, dtype=torch.float32)
            continue  # a module it trained but lacks: refused by the shape check
        if ".lora_B." in key and tensor.shape[0] == shape[0] and tensor.shape[1] <= shape[1]:
            fitted[key] = torch.zeros(shape, dtype=tensor.dtype)
            fitted[key][:, : tensor.shape[1]] = tensor * factor
        elif ".lora_A." in key and tensor.shape[1] == shape[1] and tensor.shape[0] <= shape[0]:
            fitted[key] = torch.zeros(shape, dtype=tensor.dtype)
            fitted[key][: tensor.shape[0]] = tensor
        else:
            fitted[key] = tensor  # refused by the shape check, with its name
    return fitted | {key: weights[key] for key in weights.keys() - shapes.keys()}


def _module(key: str) -> str:
    """``q_proj`` of ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    return key.split(".lora_")[0].rsplit(".", 1)[-1]


def _check_adapter_config(path: Path, lora: LoraSettings) -> dict[str, Any]:
    """The adapter's config, if it fits the slot: a LoRA (not DoRA, not rsLoRA) of at most the
    slot's rank on modules the slot has (:func:`fit_weights` pads a smaller one)."""
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise LoraError(f"{path} has no adapter_config.json; it is not a PEFT adapter") from None
    except (OSError, ValueError) as exc:
        raise LoraError(f"cannot read {path / 'adapter_config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise LoraError(f"{path / 'adapter_config.json'} is not a JSON object")
    targets = config.get("target_modules") or []
    diffs = [
        f"{key} {config.get(key)!r} ≠ {value!r}"
        for key, value in {"peft_type": "LORA", "use_dora": False, "use_rslora": False}.items()
        if (bool(config.get(key)) if key != "peft_type" else config.get(key)) != value
    ]
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or not 0 < rank <= lora.r:
        diffs.append(f"r {rank!r} is not a rank from 1 to the serving rank {lora.r}")
    if not isinstance(alpha, int | float) or alpha <= 0:
        diffs.append(f"lora_alpha {alpha!r} is not a positive number")
    if not isinstance(targets, list) or not set(targets) <= set(lora.target_modules):
        diffs.append(f"target_modules {targets!r} are not among {sorted(lora.target_modules)!r}")
    if diffs:
        raise LoraError(f"adapter {path} does not fit the serving LoRA config: {'; '.join(diffs)}")
    return config


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
