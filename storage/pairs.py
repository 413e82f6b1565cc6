"""Preference pairs: which of the replies to one prompt a user preferred (the pure rules).

The replies to one prompt (the first one, each 🔄 regeneration, each /better correction) are
its *alternatives*. One user's votes among them rank them: a correction the user wrote
(they wanted it) > 👍 > no vote > 👎. Every two alternatives the user ranks differently make a
pair, chosen over rejected: 👍 on one beats the others they did not also like, 👎 on one loses
to the others they did not also dislike; two 👍 (or two 👎) say nothing about each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.types import Turn, Vote


@dataclass(frozen=True)
class Alternative:
    """One reply to a prompt, as the pair rules see it."""

    exchange_id: int
    completion: str
    adapter_version: int | None
    corrected_by: str | None = None  # the user key of whoever wrote it (a correction)


@dataclass(frozen=True)
class PreferencePair:
    """One user's preference between two replies to the exact same prompt."""

    user_key: str
    prompt: tuple[Turn, ...]
    chosen: Alternative
    rejected: Alternative
    rated_at: datetime  # the newest of the user's votes that made it


def rank(alternative: Alternative, rater: str, votes: Mapping[int, Vote]) -> int:
    """The rater's rank of one alternative: 2 their own correction, 1 👍, 0 no vote, -1 👎."""
    if alternative.corrected_by == rater:
        return 2
    vote = votes.get(alternative.exchange_id)
    return 0 if vote is None else int(vote)


def pair_up(
    alternatives: Sequence[Alternative], rater: str, votes: Mapping[int, Vote]
) -> list[tuple[Alternative, Alternative]]:
    """(chosen, rejected) for every two alternatives ``rater`` ranks differently; empty
    replies never take part, nor two of the same text (nothing to tell apart). ``votes``: the
    rater's vote per exchange id."""
    usable = [a for a in alternatives if a.completion.strip()]
    ranked = [(rank(a, rater, votes), a) for a in usable]
    pairs = []
    for i, (rank_i, first) in enumerate(ranked):
        for rank_j, second in ranked[i + 1 :]:
            if first.completion.strip() == second.completion.strip():
                continue
            if rank_i > rank_j:
                pairs.append((first, second))
            elif rank_j > rank_i:
                pairs.append((second, first))
    return pairs
