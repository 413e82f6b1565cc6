"""How much of the machine a training step uses: its FLOPs per second against the peak of a
bfloat16 matrix multiply measured on the same machine, in the same run (model FLOPs
utilisation, MFU).

A step's FLOPs are counted from the padded tokens it ran (bot.trainer.loop.Work): a forward
pass costs 2·P per token, P the weights of the model's linear layers (the LM head included,
attention's own products left out: short sequences), less the LM head's 2·H on the positions
it skips (no label there, bot.trainer.loop.forward); a backward pass through frozen weights
another 2·P (gradients of the activations; the LoRA weights' own gradients are negligible).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bot.trainer.loop import Work

PEAK_SIZE = 1024  # square bf16 matmul: big enough to reach the kernels' steady state
PEAK_REPEATS = 8


def linear_weights(model: Any) -> int:
    """Weights of every linear layer (a LoRA layer's frozen base and its A, B), a tied LM head
    counted: each costs one multiply-add per token."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def bf16_peak(device: torch.device) -> float:
    """FLOP/s of the fastest of a few square bfloat16 matmuls on ``device``."""
    a = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=torch.bfloat16)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=torch.bfloat16)
    torch.matmul(a, b)  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        started = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * PEAK_SIZE**3 / best


def head_weights(model: Any) -> int:
    """Weights of the LM head (the output embeddings)."""
    return int(model.get_output_embeddings().weight.numel())


def utilisation(weights: int, head: int, work: Work, peak: float) -> dict[str, float]:
    """The steps' achieved FLOP/s, the peak and their ratio (``mfu``); empty before any step.
    ``weights``: every linear layer's; ``head``: the LM head's, not run where no label is."""
    if work.seconds <= 0:
        return {}
    flops = 2 * weights * (2 * work.grad_tokens + work.nograd_tokens)
    flops -= 2 * head * (2 * work.grad_headless + work.nograd_headless)
    achieved = flops / work.seconds
    return {
        "step_tflops": achieved / 1e12,
        "peak_bf16_tflops": peak / 1e12,
        "mfu": achieved / peak,
    }
