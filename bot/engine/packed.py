"""Pre-packed oneDNN weights for the linear layers of a bfloat16 model on the CPU.

``F.linear`` in bfloat16 calls oneDNN, which reorders the weight matrix into its blocked layout
on every call; for decoding (a few rows against a large matrix) that reorder costs as much as
the product itself. Packing each weight once, as torch.compile's "freezing" does, and calling
``mkldnn::_linear_pointwise`` directly computes bit-identical results (same kernel, checked at
load time) in less time: SmolLM2-135M, 2 cores, one decoding step with a filler row 44 → 37 ms;
the matmuls alone 24 → 17 ms.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def packing_supported(model: Any, device: torch.device) -> bool:
    """bfloat16 weights on a CPU whose torch has oneDNN (where packing was measured to help)."""
    return (
        device.type == "cpu"
        and model.dtype == torch.bfloat16
        and bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class _PackedForward:
    """The replacement ``forward`` of one ``nn.Linear``: the product with the packed weight."""

    def __init__(self, packed: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.packed = packed
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.packed, self.bias, "none", [], ""
        )
        return out


def pack_linears(model: Any) -> int:
    """Give every bf16 ``nn.Linear`` of ``model`` (LoRA matrices excepted) a packed weight.

    The plain weights stay (peft and tied embeddings read them); returns how many were packed.
    Raises RuntimeError if a packed product differs from ``F.linear`` on this machine.
    """
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lora_" in name:
            continue
        weight = module.weight.detach()
        if weight.dtype != torch.bfloat16:
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        forward = _PackedForward(packed, module.bias)
        if count == 0:
            _check_identical(forward, weight, module.bias)
        # An instance attribute shadows nn.Linear.forward for this module only.
        setattr(module, "forward", forward)  # noqa: B010 - mypy refuses assigning a method
        count += 1
    log.info("packed %d linear layers for oneDNN", count)
    return count


def _check_identical(forward: _PackedForward, weight: torch.Tensor, bias: Any) -> None:
    """Packing is an optimisation only: refuse it if it would change a single bit."""
    generator = torch.Generator().manual_seed(0)
    for rows in (1, 2, 5):
        x = torch.randn(rows, 1, weight.shape[1], generator=generator).to(weight.dtype)
        with torch.no_grad():
            if not torch.equal(forward(x), torch.nn.functional.linear(x, weight, bias)):
                raise RuntimeError("packed oneDNN linear differs from F.linear here")
