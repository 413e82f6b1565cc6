"""KTO: learning from binary feedback (👍 desirable, 👎 undesirable), as TRL's KTOTrainer does
it (Ethayarajh et al. 2024, eq. 7; ``trl.KTOTrainer._compute_loss`` with ``loss_type="kto"``):

    r(x, y)  = log π(y|x) − log π_ref(y|x)             (summed over the reply's tokens)
    z        = max(0, mean over the batch of r(x, y′))  (y′: another example's reply; no grad)
    loss(👍) = λ_D · (1 − σ(β (r − z)))      loss(👎) = λ_U · (1 − σ(β (z − r)))

The reference π_ref is the base model: the policy is a LoRA adapter trained fresh from zero, so
switching its layers off gives the reference exactly, with no second copy of the model. Its
log-probabilities never change, so they are computed once before training (TRL's
``precompute_ref_log_probs``), and each example's mismatched pair ``(x, y′)`` is fixed up front
(as TRL builds its KL dataset). Written here rather than with KTOTrainer for speed on CPU and
for the masking and truncation rules of bot.trainer.examples; tests/trainer/test_kto.py checks
that the loss equals TRL's on the same numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bot.learning.protocol import Phase
from bot.trainer.anchor import RefTopK, anchor_kl, top_k
from bot.trainer.examples import IGNORE, Example
from bot.trainer.loop import (
    Emit,
    Forward,
    Runtime,
    StepFn,
    forward,
    micro_batches,
    score,
    sequence_logps,
)


@dataclass(frozen=True)
class KtoItem:
    """A training example, its mismatched pair, and both under the reference model."""

    example: Example
    pair: Example
    ref_logp: float
    ref_pair_logp: float
    anchor: RefTopK | None = None  # the base's top-K per reply token (bot.trainer.anchor)


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(λ_D, λ_U) with λ_D·n_D = λ_U·n_U: the ratio the KTO paper asks for (in [1, 4/3]) at 1,
    and a mean weight of 1 per example, so imbalance changes no learning-rate scale."""
    if desirable == 0 or undesirable == 0:
        return 1.0, 1.0
    total = desirable + undesirable
    return total / (2 * desirable), total / (2 * undesirable)


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    weights: tuple[float, float],
) -> torch.Tensor:
    """Per-example KTO loss (``labels`` True: desirable). ``kl`` is the detached estimate z."""
    ratio = logps - ref_logps
    desirable = weights[0] * (1 - torch.sigmoid(beta * (ratio - kl)))
    undesirable = weights[1] * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(labels, desirable, undesirable)


def mismatched_pairs(examples: Sequence[Example], max_length: int, seed: int) -> list[Example]:
    """For each example, its prompt with another example's reply (a seeded rotation): the
    samples of the KL estimate z. Too long: the prompt is cut from the left, never the reply."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    pairs = []
    for index, example in enumerate(examples):
        prompt = example.input_ids[: example.prompt_len]
        reply = examples[partner[index]].reply_ids
        prompt = prompt[max(0, len(prompt) + len(reply) - max_length) :]
        pairs.append(
            Example(
                prompt + reply,
                [IGNORE] * len(prompt) + reply,
                example.exchange_id,
                label=example.label,
                prompt_len=len(prompt),
            )
        )
    return pairs


def reference_items(
    model: Any,
    examples: Sequence[Example],
    max_length: int,
    seed: int,
    rt: Runtime,
    emit: Emit,
    anchor: bool = False,
    see: Callable[[Forward], None] | None = None,
    free: torch.Tensor | None = None,
) -> list[KtoItem]:
    """Pair the examples and score both under the base model (adapter layers off); with
    ``anchor``, keep the base's top-K per reply token from the same pass; ``see`` sees the
    examples' passes too (the gate's reward model takes its features from them); ``free``
    (token ids the anchor leaves to the ratings) keeps the base's probability of those."""
    pairs = mismatched_pairs(examples, max_length, seed)
    emit(Phase("reference", examples=len(examples)))
    tops: list[RefTopK] = []

    def keep(out: Forward) -> None:
        if anchor:
            tops.extend(top_k(out, free))
        if see is not None:
            see(out)

    with model.disable_adapter():
        ref = score(model, examples, rt, keep if anchor or see is not None else None)
        ref_pairs = score(model, pairs, rt)
    anchors: list[RefTopK | None] = list(tops) if anchor else [None] * len(examples)
    return [
        KtoItem(example, pair, logp, pair_logp, top)
        for example, pair, (logp, _), (pair_logp, _), top in zip(
            examples, pairs, ref, ref_pairs, anchors, strict=True
        )
    ]


def kto_step(
    model: Any,
    rt: Runtime,
    beta: float,
    weights: tuple[float, float],
    sft_weight: float = 0.0,
    anchor_weight: float = 0.0,
    free: torch.Tensor | None = None,
) -> StepFn:
    """One KTO step over a batch of KtoItems: z first (no grad), then the loss, micro-batched.

    ``sft_weight`` adds that times the mean NLL per token of the batch's 👍 replies: KTO alone
    moves a fresh adapter slowly (its loss saturates at β·r), the NLL imitates what was liked
    directly; KTO still pushes the 👎 replies down relative to the base. ``anchor_weight`` adds
    that times the mean KL to the base per reply token of every example (bot.trainer.anchor;
    the items must carry their ``anchor``); the anchor leaves the ``free`` token ids to the
    ratings (bot.trainer.anchor.anchor_kl), and its reported ``anchor_kl`` is then the KL given
    the next token is none of them (not comparable with a run that frees nothing).
    """

    def step(batch: list[KtoItem]) -> dict[str, float]:
        with torch.no_grad():  # z carries no gradient, as in TRL
            pair_logps = torch.cat(
                [
                    sequence_logps(model, group, rt)
                    for group in micro_batches([i.pair for i in batch])
                ]
            )
        ref_pairs = torch.tensor([i.ref_pair_logp for i in batch], device=rt.device)
        kl = (pair_logps - ref_pairs).mean().clamp(min=0)
        by_example = {id(i.example): i for i in batch}
        liked_tokens = sum(_reply_tokens(i.example) for i in batch if i.example.label)
        all_tokens = sum(_reply_tokens(i.example) for i in batch)
        total = drift = 0.0
        for group in micro_batches([i.example for i in batch]):
            items = [by_example[id(ex)] for ex in group]
            out = forward(model, group, rt)
            logps = -out.nll.sum(-1)
            ref = torch.tensor([i.ref_logp for i in items], device=rt.device)
            labels = torch.tensor([ex.label for ex in group], device=rt.device)
            loss = kto_losses(logps, ref, labels, kl, beta, weights).sum() / len(batch)
            if sft_weight and liked_tokens:
                loss = loss - sft_weight * (logps * labels).sum() / liked_tokens
            if anchor_weight and all_tokens:
                away = anchor_kl(out, [_anchor(i) for i in items], free) / all_tokens
                loss = loss + anchor_weight * away
                drift += float(away.detach())
            loss.backward()  # type: ignore[no-untyped-call]
            total += float(loss.item())
        stats = {"loss": total, "kl": float(kl)}
        return stats | ({"anchor_kl": drift} if anchor_weight else {})

    return step


def _anchor(item: KtoItem) -> RefTopK:
    if item.anchor is None:
        raise ValueError("anchor_weight needs items scored with anchor=True")
    return item.anchor


def _reply_tokens(example: Example) -> int:
    """Tokens that carry a label (the NLL's denominator), as token_nll counts them."""
    return sum(1 for label in example.labels[1:] if label != IGNORE)
