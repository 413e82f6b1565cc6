"""Attention for the decode engine: SDPA for a prompt; for decoding, batch-invariant attention.

Why: a sequence's greedy reply must not depend on what else is in the batch. Linear layers on
the CPU compute each row the same whatever the batch size (beyond a filler row, see
:class:`bot.engine.batch.Batch`), but attention kernels may change their accumulation order
with the batch and its padding. Measured with torch 2.13 on the CPU:

- bfloat16 attention as two batched matmuls over the engine's right-padded cache
  (:mod:`bot.engine.kv_cache`: a row's keys always start at position 0, a mask zeroes the rest)
  gives a row bit-identical output alone or among rows of other lengths (SmolLM2 and the test
  model; real replies checked by the slow tests). So it runs batched: one call per layer
  instead of one per row (16 rows: 1.7 ms → 0.25 ms a layer, ×30 layers a step).
- float32 (MKL) matmuls differ with their shapes, and nothing was measured on CUDA: there a
  row attends alone, over its own keys only (small matmuls, exact by construction).

Registered with transformers' ``AttentionInterface``: :data:`ROWWISE_ATTENTION` (exact, the
default) and :data:`BATCHED_ATTENTION` (always batched SDPA: faster for float32 or CUDA
batches, but replies may then change with their company).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ROWWISE_ATTENTION = "selftune_rowwise"
BATCHED_ATTENTION = "selftune_batched"


def _batch_invariant_sdpa(query: torch.Tensor) -> bool:
    """Where batched attention was measured to compute each row as it does alone."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16


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
    if query.shape[2] != 1 or _batch_invariant_sdpa(query):
        return batched_attention(
            module, query, key, value, attention_mask, scaling, dropout, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    query = query * scale  # once for the batch: fewer small ops per row
    lengths = _attended(attention_mask, query.shape[0], key.shape[2])
    rows = [
        _attend(query[b : b + 1], key[b : b + 1, :, :n], value[b : b + 1, :, :n])
        for b, n in enumerate(lengths)
    ]
    return torch.cat(rows), None


def batched_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Like :func:`rowwise_attention`, but decoding always runs batched."""
    if query.shape[2] != 1:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return output, None
    return _batched(query, key, value, attention_mask, scaling), None


def _batched(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """One decoding token per row against the padded cache, as two batched matmuls.

    Grouped-query heads are folded into the query (query head h reads kv head h // groups);
    scores and softmax in float32, masked keys get exactly zero weight. Not torch's SDPA: its
    CPU kernel is built for long queries (one token a row: 16 rows × 200 keys, 2.9 ms a layer,
    this 0.25 ms), and it is not batch-invariant here (its key blocks follow the longest row).
    """
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scale = scaling if scaling is not None else dim**-0.5
    scores = torch.matmul(grouped, key.transpose(2, 3)).float() * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(weights, value)  # batch × Hkv × groups × D
    return output.reshape(batch, 1, heads, dim)


def _attended(mask: torch.Tensor | None, batch: int, keys: int) -> list[int]:
    """Per row, how many keys it attends to (the engine's rows start at position 0)."""
    if mask is None:
        return [keys] * batch
    attends = mask if mask.dtype == torch.bool else mask == 0
    last_query = attends.reshape(batch, -1, attends.shape[-1])[:, -1, :]
    counts: list[int] = last_query.sum(dim=-1).tolist()  # one device sync, not one per row
    return counts


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


for _name, _function in (
    (ROWWISE_ATTENTION, rowwise_attention),
    (BATCHED_ATTENTION, batched_attention),
):
    AttentionInterface.register(_name, _function)
    AttentionMaskInterface.register(_name, sdpa_mask)
