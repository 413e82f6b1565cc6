"""The anchor: keep the adapter's next-token distributions close to the base model's on the
rated replies, so that the ratings move only what they are about.

KTO and the 👍 NLL move whole sequences: pushing down 👎 replies that are the base model's own
samples pushes down base-like text in general, and imitating a handful of 👍 replies pulls
every token towards them; the bench saw the taste learned but the base's own greedy replies to
unrelated prompts 24-72 % less likely (bench/taste.py). The anchor adds, per reply token,

    KL(π_base(·|prefix) ‖ π(·|prefix))      (over the base's top-K tokens there)

which is what that damage measures (the NLL of text the base would write is its entropy plus
this KL), as RLHF's KL penalty does. A change the ratings agree on (how replies end, their
length) still costs KL only where it happens; the rest stays put. The base's top-K
log-probabilities are computed once, in the same pass as the reference log-probabilities
(nothing runs twice), and kept small: K ids and values per reply token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bot.trainer.loop import Forward

TOP_K = 32  # the base's most likely tokens per position: > 0.9 of its mass on replies here


@dataclass(frozen=True)
class RefTopK:
    """The base model's top-K next tokens and their log-probabilities, per reply token."""

    ids: torch.Tensor  # [reply tokens, K] int64
    logp: torch.Tensor  # [reply tokens, K] float32


def top_k(out: Forward) -> list[RefTopK]:
    """Each row's reference top-K at its labelled positions (call under no_grad, base model)."""
    values, ids = out.logp.topk(min(TOP_K, out.logp.shape[-1]), dim=-1)
    counts = out.labelled.sum(-1).tolist()
    return [
        RefTopK(i.cpu(), v.cpu())
        for i, v in zip(torch.split(ids, counts), torch.split(values, counts), strict=True)
    ]


def anchor_kl(out: Forward, refs: Sequence[RefTopK]) -> torch.Tensor:
    """Summed KL(base top-K ‖ π) over every labelled token of the group's rows."""
    device = out.logp.device
    ids = torch.cat([ref.ids for ref in refs]).to(device)
    ref_logp = torch.cat([ref.logp for ref in refs]).to(device)
    logp = out.logp.gather(-1, ids)
    return (ref_logp.exp() * (ref_logp - logp)).sum()
