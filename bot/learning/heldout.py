"""How many held-out rows the gate judges on, and how a young bot gets them. No torch.

A grown bot holds out the rows whose stable text hash falls under ``gate.heldout_fraction``
(bot.learning.curation), and its gate needs ``gate.min_heldout`` of them. A young bot — too
few rated replies for that pool to reach ``min_heldout`` — would never be judged, so its first
runs could not go live. While young, the gate instead needs ``heldout_fraction`` of the rows,
at least ``gate.heldout_floor``: the rows with the lowest hashes (the hash pool's own rows
first) that the serving adapter was not trained on, as long as at least as many rows are left
to train on. The floor grows with the data until the hash pool takes over.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Protocol, TypeVar

from bot.settings import GateSettings

_SPLIT_SALT = "selftune-heldout-v1"  # fixed: changing it would move rows between the splits
_MOST_RATINGS_ASKED = 100_000  # ratings_to_judge stops counting here


class Keyed(Protocol):
    """A row with its text's content key."""

    @property
    def key(self) -> str: ...


R = TypeVar("R", bound=Keyed)


def split_value(key: str) -> float:
    """A row's stable place in [0, 1): under ``heldout_fraction`` it is in the hash pool."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(key: str, fraction: float) -> bool:
    """Stable split by the text's hash: the same row lands on the same side in every run."""
    return split_value(key) < fraction


def is_young(rows: int, gate: GateSettings) -> bool:
    """Whether ``rows`` distinct rated replies are too few for the hash pool to be expected to
    reach ``min_heldout`` (and the young floor is on)."""
    fraction = gate.heldout_fraction if gate.enabled else 0.0
    return gate.heldout_floor > 0 and fraction > 0 and rows * fraction < gate.min_heldout


def heldout_needed(rows: int, gate: GateSettings) -> int:
    """Held-out rows the gate needs to judge a run on ``rows`` distinct rated replies."""
    if not is_young(rows, gate):
        return gate.min_heldout
    grown = math.ceil(gate.heldout_fraction * rows)
    return min(gate.min_heldout, max(gate.heldout_floor, grown))


def young_slice(rows: Sequence[R], unseen: Sequence[R], gate: GateSettings) -> list[R]:
    """A young bot's held-out rows: the ``heldout_needed`` unseen rows with the lowest hash,
    or none when there are too few (fewer unseen, or fewer left to train on than held out)."""
    needed = heldout_needed(len(rows), gate)
    if len(unseen) < needed or len(rows) - needed < needed:
        return []
    return sorted(unseen, key=lambda r: split_value(r.key))[:needed]


def ratings_to_judge(rows: int, unseen: int, gate: GateSettings) -> int | None:
    """About how many more rated replies (new texts) the gate needs before it can judge a run,
    when it cannot judge one on ``rows`` rows (``unseen`` of them not trained on by the serving
    adapter); None when it never will (the gate is off, or holds nothing out)."""
    fraction = gate.heldout_fraction if gate.enabled else 0.0
    if fraction <= 0:
        return None
    for more in range(1, _MOST_RATINGS_ASKED):
        total = rows + more
        needed = heldout_needed(total, gate)
        if is_young(total, gate):
            if unseen + more >= needed and total - needed >= needed:
                return more
        elif (unseen + more) * fraction >= gate.min_heldout:
            return more  # expected: the hash pool holds about this share of the rows
    return None
