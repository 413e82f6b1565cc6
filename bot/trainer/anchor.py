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

But "only where it happens" is still a cost, and it falls on exactly what the ratings ask to
change: the anchor held the end of turn where the ratings asked for shorter replies, and a
list's first dash where they asked for lists. So ``training.anchor_free`` can leave a few
tokens F to the ratings. KL(base ‖ π) splits exactly into three parts: the KL of "a token of F
next, or not", P_base(F) · the KL of which token of F, and P_base(not F) · the KL of the next
token *given it is none of them*. A free anchor keeps only the last part: the ratings decide
how much mass goes to the free tokens and how it is shared among them. "end" frees the end
of turn (reply length); "rated" also frees the tokens the 👍 and 👎 replies of the run use at
clearly different rates (``disputed_tokens``: a list's newlines and numbers, the first person,
a question mark), found from the ratings alone, so no taste is named in the code. Measured in
bench/taste.py (the README's learning table).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bot.trainer.examples import IGNORE, Example
from bot.trainer.loop import Forward

TOP_K = 32  # the base's most likely tokens per position: > 0.9 of its mass on replies here
DISPUTED = 8  # the most tokens the ratings may free from the anchor
DISPUTED_Z = 4.0  # |z| of a token's rate between 👍 and 👎 replies to count as disputed


@dataclass(frozen=True)
class RefTopK:
    """The base model's top-K next tokens and their log-probabilities, per reply token."""

    ids: torch.Tensor  # [reply tokens, K] int64
    logp: torch.Tensor  # [reply tokens, K] float32
    # With free tokens (see anchor_kl): the base's log-probability of any of them, per token.
    free_logp: torch.Tensor | None = None  # [reply tokens] float32


def top_k(out: Forward, free: torch.Tensor | None = None) -> list[RefTopK]:
    """Each row's reference top-K at its labelled positions (call under no_grad, base model);
    with ``free`` (token ids), also the log-probability of the next token being one of them."""
    values, ids = out.logp.topk(min(TOP_K, out.logp.shape[-1]), dim=-1)
    counts = out.labelled.sum(-1).tolist()
    frees = torch.split(_any_of(out, free), counts) if free is not None else [None] * len(counts)
    return [
        RefTopK(i.cpu(), v.cpu(), None if f is None else f.cpu())
        for i, v, f in zip(
            torch.split(ids, counts), torch.split(values, counts), frees, strict=True
        )
    ]


def _any_of(out: Forward, free: torch.Tensor) -> torch.Tensor:
    """log P(next token in ``free``) at each labelled position."""
    return out.logp[:, free.to(out.logp.device)].logsumexp(-1)


def _not(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - p) from log p (p < 1)."""
    return torch.log(-torch.expm1(logp.clamp(max=-1e-6)))


def anchor_kl(
    out: Forward, refs: Sequence[RefTopK], free: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed KL(base top-K ‖ π) over every labelled token of the group's rows.

    With ``free`` token ids (the refs carry ``free_logp``) those tokens are left to the ratings:
    the KL is between the two distributions of the next token *given that it is none of them*,
    so the anchor holds the rest of what a reply says (the end of turn free: the ratings alone
    decide where a reply stops)."""
    device = out.logp.device
    ids = torch.cat([ref.ids for ref in refs]).to(device)
    ref_logp = torch.cat([ref.logp for ref in refs]).to(device)
    logp = out.logp.gather(-1, ids)
    if free is None:
        return (ref_logp.exp() * (ref_logp - logp)).sum()
    # KL(base ‖ π) = KL of a free token or not + P_base(F) · KL(which free token)
    # + P_base(none) · KL(next token | none): the last term alone, each position weighted by
    # how likely the base is to go on there. (log(1 - p) is clamped at p = 1 - 1e-6, which
    # stops an adapter from making a free token surer than that.)
    ref_free = torch.cat([_free_logp(ref) for ref in refs]).to(device)
    ratio = ref_logp - _not(ref_free).unsqueeze(-1) - logp + _not(_any_of(out, free)).unsqueeze(-1)
    kept = ~torch.isin(ids, free.to(device))
    return (kept * ref_logp.exp() * ratio).sum()


def _free_logp(ref: RefTopK) -> torch.Tensor:
    if ref.free_logp is None:
        raise ValueError("free tokens need refs taken with top_k(out, free)")
    return ref.free_logp


def disputed_tokens(examples: Sequence[Example], limit: int = DISPUTED) -> list[int]:
    """The reply tokens whose rate differs most between 👍 and 👎 replies (a two-proportion
    z-test, |z| ≥ DISPUTED_Z: a bar that chance over a whole vocabulary rarely clears), the
    ``limit`` strongest: where the ratings say what they are about (a list's dashes, a
    question mark, the first person)."""
    counts = [Counter[int](), Counter[int]()]
    for example in examples:
        counts[example.label].update(t for t in example.labels if t != IGNORE)
    liked, disliked = counts[True], counts[False]
    n_liked, n_disliked = liked.total(), disliked.total()
    if not n_liked or not n_disliked:
        return []
    scored = []
    for token in liked.keys() | disliked.keys():
        a, b = liked[token], disliked[token]
        p = (a + b) / (n_liked + n_disliked)
        spread = math.sqrt(p * (1 - p) * (1 / n_liked + 1 / n_disliked))
        z = (a / n_liked - b / n_disliked) / spread if spread else 0.0
        if abs(z) >= DISPUTED_Z:
            scored.append((abs(z), token))
    return [token for _, token in sorted(scored, reverse=True)[:limit]]
