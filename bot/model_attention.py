"""Attention for the decode engine: SDPA for a prompt, one sequence at a time when decoding.

Why: a sequence's greedy reply must not depend on what else is in the batch. Linear layers on
the CPU compute each row the same whatever the batch size, but batched attention kernels
change their accumulation order with the batch and its left padding, enough to flip bfloat16
greedy choices (measured on SmolLM2 with both SDPA and eager attention). Decoding attention is
a small part of a step, so computing it per sequence, over that sequence's own keys only,
costs little and makes a batched row compute exactly what the sequence computes alone.

Registered with transformers' ``AttentionInterface`` under :data:`ROWWISE_ATTENTION`; load a
model with ``attn_implementation=ROWWISE_ATTENTION`` to use it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ROWWISE_ATTENTION = "selftune_rowwise"


def rowwise_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention with transformers' signature: batch × heads × tokens × dim in, output
    batch × tokens × heads × dim. Several query tokens (a prompt) go to SDPA unchanged."""
    if query.shape[2] != 1:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return output, None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    query = query * scale  # once for the batch: fewer small ops per row
    starts = _first_attended(attention_mask, query.shape[0])
    rows = [
        _attend(query[b : b + 1], key[b : b + 1, :, s:], value[b : b + 1, :, s:])
        for b, s in enumerate(starts)
    ]
    return torch.cat(rows), None


def _first_attended(mask: torch.Tensor | None, batch: int) -> list[int]:
    """Per row, the first key position it attends to (the engine pads on the left only)."""
    if mask is None:
        return [0] * batch
    attends = mask if mask.dtype == torch.bool else mask == 0
    last_query = attends.reshape(batch, -1, attends.shape[-1])[:, -1, :]
    return [int(i) for i in last_query.to(torch.int8).argmax(dim=-1)]


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One sequence, one (scaled) query token: 1 × Hq × 1 × D against 1 × Hkv × T × D.

    Grouped-query heads are folded into the query instead of repeating keys and values
    (query head h reads kv head h // groups, as ``repeat_kv`` arranges it).
    """
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[-1]
    grouped = query.reshape(1, kv_heads, heads // kv_heads, dim)
    weights = torch.matmul(grouped, key.transpose(2, 3))
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, value)  # 1 × Hkv × groups × D
    return output.reshape(1, 1, heads, dim)


AttentionInterface.register(ROWWISE_ATTENTION, rowwise_attention)
AttentionMaskInterface.register(ROWWISE_ATTENTION, sdpa_mask)
