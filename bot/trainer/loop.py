"""The optimisation machinery both objectives share: batches, micro-batches, log-probabilities,
AdamW (constant or linearly decaying learning rate), and the supervised (SFT) step.

Batches are length-bucketed: each epoch is shuffled, then cut into windows of BUCKET batches
whose examples are sorted by length before they are cut into batches (and the batches shuffled
again), so a batch holds examples of similar length and little of each forward pass is padding.
Micro-batches bound peak memory: a batch of 8 long examples is cut into forward passes of at
most MICRO_BATCH_TOKENS padded tokens, with the same gradient as one pass.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from bot.engine.runtime import cpu_bf16_supported
from bot.learning.protocol import Event, Step
from bot.settings import TrainingSettings
from bot.trainer.examples import IGNORE, Example

MICRO_BATCH_TOKENS = 2048  # padded tokens per forward pass: bounds peak memory (~7 GB fp32)
# Attention as plain matmuls ("eager") up to this padded width on a CPU, SDPA beyond. Measured on
# the reference CPU (SmolLM2-135M with LoRA, bf16 autocast, forward + backward): eager 2.05 vs
# SDPA 2.57 s at 16 x 128 tokens, 2.21 vs 2.60 at 8 x 256, but 4.13 vs 3.24 at 4 x 512 (SDPA's
# CPU flash backward costs ~9 ms a layer on short rows; eager's [L, L] scores grow with L^2).
EAGER_ATTENTION_WIDTH = 256
BUCKET = 8  # batches per length-sorted window: similar lengths in a batch, order still random
Emit = Callable[[Event], None]
StepFn = Callable[[list[Any]], dict[str, float]]  # forward + backward of one batch; its stats
T = TypeVar("T")


@dataclass
class Work:
    """Padded tokens the model has run forward, with and without a backward pass after: what
    the step's FLOPs (bot.trainer.flops) are counted from."""

    grad_tokens: int = 0
    nograd_tokens: int = 0
    grad_headless: int = 0  # of those, positions the LM head skipped (no label there)
    nograd_headless: int = 0
    seconds: float = 0.0  # time spent in optimizer steps


@dataclass(frozen=True)
class Runtime:
    """Where and how the model computes."""

    device: torch.device
    pad_id: int
    bf16: bool  # bfloat16 autocast (trainable weights stay float32)
    attention: str = "sdpa"  # the model's own attention: off the CPU and for long passes
    work: Work = field(default_factory=Work, compare=False)


def total_steps(examples: int, settings: TrainingSettings) -> int:
    """Optimizer steps: ``epochs`` passes of ``batch_size`` examples, capped by ``max_steps``."""
    steps = max(1, math.ceil(settings.epochs * math.ceil(examples / settings.batch_size)))
    return min(steps, settings.max_steps) if settings.max_steps else steps


def rows_used(items: Sequence[T], per_step: int, total: int, seed: int) -> list[T]:
    """The items ``total`` steps of ``per_step`` actually see: all of them when the steps cover
    an epoch, else a seeded sample of ``total × per_step`` (in their order). Training on exactly
    these means nothing is scored or recorded as trained that the run never looks at."""
    wanted = total * per_step
    if wanted >= len(items):
        return list(items)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in sorted(order[:wanted])]


def batches(
    items: Sequence[T], size: int, total: int, seed: int, length: Callable[[T], int] | None = None
) -> Iterator[list[T]]:
    """``total`` batches: each epoch a fresh seeded shuffle, length-bucketed when ``length``
    is given (see the module's note); an epoch's last batch may be short."""
    rng = random.Random(seed)
    produced = 0
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        for batch in _epoch(order, size, rng, None if length is None else _lengths(items, length)):
            yield [items[i] for i in batch]
            produced += 1
            if produced == total:
                return


def _lengths(items: Sequence[T], length: Callable[[T], int]) -> list[int]:
    return [length(item) for item in items]


def _epoch(
    order: list[int], size: int, rng: random.Random, lengths: list[int] | None
) -> list[list[int]]:
    """One epoch's batches of indices: in shuffled order, or bucketed by length."""
    if lengths is None:
        return [order[start : start + size] for start in range(0, len(order), size)]
    out: list[list[int]] = []
    window = size * BUCKET
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        out.extend(chunk[k : k + size] for k in range(0, len(chunk), size))
    rng.shuffle(out)
    return out


def tokens_of(item: Any) -> int:
    """An Example's length, or that of the example an item wraps (a KTO or pair item)."""
    return len(getattr(item, "example", item).input_ids)


def micro_batches(batch: Sequence[Example]) -> Iterator[list[Example]]:
    """Split ``batch`` into groups whose padded size stays under ``MICRO_BATCH_TOKENS``."""
    # Same gradient as one pass, less memory: activations scale with padded tokens per pass.
    group: list[Example] = []
    for example in batch:
        longest = max([len(ex.input_ids) for ex in group] + [len(example.input_ids)])
        if group and longest * (len(group) + 1) > MICRO_BATCH_TOKENS:
            yield group
            group = []
        group.append(example)
    if group:
        yield group


def collate(
    group: Sequence[Example], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: ids, attention mask, labels (IGNORE on padding)."""
    width = max(len(ex.input_ids) for ex in group)
    ids = [ex.input_ids + [pad_id] * (width - len(ex.input_ids)) for ex in group]
    mask = [[1] * len(ex.input_ids) + [0] * (width - len(ex.input_ids)) for ex in group]
    labels = [ex.labels + [IGNORE] * (width - len(ex.labels)) for ex in group]
    return (
        torch.tensor(ids, device=device),
        torch.tensor(mask, device=device),
        torch.tensor(labels, device=device),
    )


@dataclass(frozen=True)
class Forward:
    """One forward pass over a group, with the LM head run only where a label is: the
    next-token log-probabilities at the labelled positions (row after row), which rows they
    belong to, and the per-token NLL of the labels (0 elsewhere)."""

    logp: torch.Tensor  # [labelled positions, vocab], float32, log-softmax of the logits
    labelled: torch.Tensor  # [rows, width - 1] bool
    nll: torch.Tensor  # [rows, width - 1]
    hidden: torch.Tensor | None = None  # [labelled positions, d]: the body's last states there


def forward(model: Any, group: Sequence[Example], rt: Runtime) -> Forward:
    """Run ``group`` forward (counting the work) and take the NLL of its labelled tokens.

    The body runs on every token but the LM head (a fifth of a small model's weights, and a
    vocabulary-wide softmax) only on the reply tokens that carry a label: the prompt's
    positions would be computed and thrown away."""
    ids, mask, labels = collate(group, rt.pad_id, rt.device)
    targets = labels[:, 1:]
    labelled = targets != IGNORE
    headless = ids.numel() - int(labelled.sum())
    if torch.is_grad_enabled():
        rt.work.grad_tokens += ids.numel()
        rt.work.grad_headless += headless
    else:
        rt.work.nograd_tokens += ids.numel()
        rt.work.nograd_headless += headless
    causal = use_attention(model, ids.shape[1], rt)
    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.bf16):
        body = getattr(causal, causal.base_model_prefix)
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        states = hidden[labelled]
        logits = causal.get_output_embeddings()(states)
    # One log-softmax serves the NLL and the anchor's KL (bot.trainer.anchor): over a
    # 49k-token vocabulary each one, with its backward, is ~3 % of a CPU training step.
    logp = logits.float().log_softmax(-1)
    picked = -logp.gather(-1, targets[labelled].unsqueeze(-1)).squeeze(-1)
    nll = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
    nll = nll.masked_scatter(labelled, picked)
    return Forward(logp, labelled, nll, states.detach())


def attention_for(width: int, rt: Runtime) -> str:
    """The attention implementation a pass over ``width`` padded tokens runs fastest with
    (see EAGER_ATTENTION_WIDTH): eager for short passes on a CPU, else the model's own."""
    short = rt.device.type == "cpu" and width <= EAGER_ATTENTION_WIDTH
    return "eager" if short else rt.attention


def use_attention(model: Any, width: int, rt: Runtime) -> Any:
    """Set the attention for a pass (or a generation) over ``width`` tokens, every time: the
    model's config is shared by every caller, so none may inherit the last one's choice.
    Returns the causal LM (the model under a peft wrapper)."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    wanted = attention_for(width, rt)
    if causal.config._attn_implementation != wanted:
        causal.set_attn_implementation(wanted)
    return causal


def token_nll(
    model: Any, group: Sequence[Example], rt: Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the labels (0 elsewhere) and the label mask."""
    out = forward(model, group, rt)
    return out.nll, out.labelled


def sequence_logps(model: Any, group: Sequence[Example], rt: Runtime) -> torch.Tensor:
    """Summed log-probability of each example's labelled tokens (the reply), one forward."""
    nll, _ = token_nll(model, group, rt)
    return -nll.sum(-1)


@torch.no_grad()
def score(
    model: Any,
    examples: Sequence[Example],
    rt: Runtime,
    keep: Callable[[Forward], None] | None = None,
) -> list[tuple[float, int]]:
    """(summed reply log-prob, reply tokens) of each example, in eval mode (no dropout);
    ``keep`` sees each forward pass too (the anchor takes the base's top-K from it)."""
    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = []
    try:
        for group in micro_batches(examples):
            passed = forward(model, group, rt)
            if keep is not None:
                keep(passed)
            nll, labelled = passed.nll, passed.labelled
            out.extend(zip((-nll.sum(-1)).tolist(), labelled.sum(-1).tolist(), strict=True))
    finally:
        model.train(was_training)
    return [(float(logp), int(tokens)) for logp, tokens in out]


def sft_step(model: Any, rt: Runtime) -> StepFn:
    """Supervised step: mean NLL over the batch's label tokens (the liked replies)."""

    def step(batch: list[Example]) -> dict[str, float]:
        label_count = sum(1 for ex in batch for label in ex.labels[1:] if label != IGNORE)
        total = 0.0
        for group in micro_batches(batch):
            nll, _ = token_nll(model, group, rt)
            loss = nll.sum() / max(label_count, 1)
            loss.backward()  # type: ignore[no-untyped-call]
            total += float(loss.item())
        return {"loss": total}

    return step


def optimize(
    model: Any,
    items: Sequence[Any],
    settings: TrainingSettings,
    total: int,
    step: StepFn,
    emit: Emit,
    extra: Callable[[], dict[str, float]] | None = None,
    work: Work | None = None,
) -> list[float]:
    """AdamW over ``total`` length-bucketed batches, the learning rate constant or decaying
    linearly (``settings.schedule``); returns each step's loss.

    ``extra`` runs after each step's backward (an additional loss term adding its gradient).
    ``work`` (the Runtime's counter) gets the seconds spent in steps.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    decay = settings.schedule == "linear"
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: 1.0 - done / total if decay else 1.0
    )
    losses = []
    plan = batches(items, settings.batch_size, total, settings.seed, tokens_of)
    for number, batch in enumerate(plan, 1):
        started = time.perf_counter()
        stats = step(batch)
        if extra is not None:
            stats.update(extra())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if work is not None:
            work.seconds += time.perf_counter() - started
        losses.append(stats["loss"])
        emit(_step(number, total, stats))
    return losses


def _step(number: int, total: int, stats: dict[str, float]) -> Step:
    """The step's event; the numbers rounded (they travel as text, one line per step)."""

    def stat(name: str) -> float | None:
        return round(stats[name], 6) if name in stats else None

    return Step(number, total, round(stats["loss"], 6), stat("kl"), stat("lm_loss"))


def use_bf16(dtype: str, device: torch.device) -> bool:
    """Whether to train with bfloat16 autocast: as configured, or on ``auto`` where the device
    supports it."""
    if dtype != "auto":
        return dtype == "bfloat16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_supported()
