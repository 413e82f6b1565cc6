"""Preference pairs: a chosen and a rejected reply to the same prompt (a regenerated reply
against the one it replaced, a /better correction against the original), in TRL's format
``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}``.

They train with DPO (Rafailov et al. 2023; ``trl.DPOTrainer``'s ``sigmoid`` loss):

    loss = −log σ(β · ((log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))))

A pair states a preference directly, so the pairwise loss needs no KL estimate and no
class weights (KTO's z and λ); the reference π_ref is the base (the adapter switched off), its
log-probabilities computed once for the pairs the run uses. The term joins the ratings' loss as
an extra gradient each step (``training.pair_weight``), as the self-supervised term does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bot.trainer.examples import Dropped, Example, Unfit, build_example, end_of_turn_id
from bot.trainer.loop import Runtime, batches, micro_batches, score, sequence_logps


@dataclass(frozen=True)
class PairItem:
    """A pair's two examples and their log-probabilities under the reference (the base)."""

    chosen: Example
    rejected: Example
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def example(self) -> Example:
        return self.chosen  # its length buckets the pair


def build_pairs(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int
) -> tuple[list[PairItem], list[Dropped]]:
    """Tokenize each pair's two replies with its prompt; report pairs that cannot be used."""
    end_id = end_of_turn_id(tokenizer)
    pairs: list[PairItem] = []
    dropped: list[Dropped] = []
    for row in rows:
        ident = row.get("exchange_id")
        try:
            chosen, rejected = (
                build_example(
                    tokenizer,
                    {"prompt": row.get("prompt"), "completion": row.get(side), "label": liked},
                    max_length,
                    end_id,
                )
                for side, liked in (("chosen", True), ("rejected", False))
            )
        except Unfit as exc:
            dropped.append(Dropped(ident, f"pair: {exc}"))
            continue
        pairs.append(PairItem(chosen, rejected))
    return pairs, dropped


def reference_pairs(model: Any, pairs: Sequence[PairItem], rt: Runtime) -> list[PairItem]:
    """The pairs with both replies scored under the base model (adapter layers off)."""
    with model.disable_adapter():
        chosen = score(model, [p.chosen for p in pairs], rt)
        rejected = score(model, [p.rejected for p in pairs], rt)
    return [
        PairItem(p.chosen, p.rejected, c, r)
        for p, (c, _), (r, _) in zip(pairs, chosen, rejected, strict=True)
    ]


def dpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss from summed reply log-probabilities."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def pair_term(
    model: Any,
    pairs: Sequence[PairItem],
    weight: float,
    beta: float,
    size: int,
    seed: int,
    rt: Runtime,
) -> Callable[[], dict[str, float]]:
    """A callable adding ``weight`` × the mean DPO loss of the next ``size`` pairs to the
    gradient (cycling through the pairs for as many steps as training takes)."""
    stream = batches(pairs, size, 10**9, seed)

    def term() -> dict[str, float]:
        batch = next(stream)
        examples = [p.chosen for p in batch] + [p.rejected for p in batch]
        logps = torch.cat([sequence_logps(model, g, rt) for g in micro_batches(examples)])
        ref = torch.tensor(
            [p.ref_chosen for p in batch] + [p.ref_rejected for p in batch], device=rt.device
        )
        n = len(batch)
        loss = dpo_losses(logps[:n], logps[n:], ref[:n], ref[n:], beta).mean()
        (weight * loss).backward()  # type: ignore[no-untyped-call]
        return {"pair_loss": float(loss.item())}

    return term
