"""Preference pairs as a run's data, checked like ratings (bot.learning.curation).

A pair (``storage.pairs``: one user preferred one reply to a prompt over another) comes from
users who did not opt out, whom no operator excluded, on exchanges no /forget removed: the
repository leaves the rest out. Here: each user's pairs share the per-user cap with their
ratings (newest first, after the ratings the run keeps); the same preference from several users
is one row; opposite preferences on the same two replies keep the majority (a tie drops both);
and while the gate judges the run, a stable hash of the pair holds some out, as for ratings.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.learning.curation import Curated, Dropped, Split, cap_per_user, is_heldout
from bot.settings import GateSettings, TrainingSettings
from bot.types import Turn, messages
from storage.pairs import PreferencePair


@dataclass(frozen=True)
class PairRow:
    """One distinct preference of a run: chosen over rejected for one exact prompt."""

    prompt: tuple[Turn, ...]
    chosen: str
    rejected: str
    chosen_id: int
    rejected_id: int
    chosen_version: int | None  # the adapter that wrote the chosen reply (None: base model)
    rejected_version: int | None
    key: str  # pair_key: the identity of the preference, which also fixes its split
    users: tuple[str, ...]
    split: Split = "train"

    def to_json(self) -> dict[str, Any]:
        """TRL's conversational preference format (``prompt``, ``chosen``, ``rejected``) and
        where the row came from."""
        return {
            "prompt": messages(self.prompt),
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
            "chosen_exchange_id": self.chosen_id,
            "rejected_exchange_id": self.rejected_id,
            "chosen_adapter_version": self.chosen_version,
            "rejected_adapter_version": self.rejected_version,
            "key": self.key,
            "users": list(self.users),
            "split": self.split,
        }


@dataclass
class CuratedPairs:
    """The pairs of one run: trained on, held out, and dropped (with the reason)."""

    train: list[PairRow]
    heldout: list[PairRow]
    dropped: list[Dropped] = field(default_factory=list)

    @property
    def rows(self) -> list[PairRow]:
        return self.train + self.heldout

    def exchange_ids(self) -> list[int]:
        """The exchanges the training pairs learn from (both sides)."""
        return sorted({i for r in self.train for i in (r.chosen_id, r.rejected_id)})


def pair_key(prompt: Sequence[Turn], chosen: str, rejected: str) -> str:
    """Identity of a preference: the same prompt, chosen and rejected text."""
    text = json.dumps(
        [[t.role, t.content] for t in prompt] + [chosen, rejected], ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def curate_pairs(
    pairs: Sequence[PreferencePair],
    training: TrainingSettings,
    gate: GateSettings,
    ratings: Curated,
) -> CuratedPairs:
    """Apply the checks to ``pairs`` (newest first), next to the run's curated ``ratings``:
    the held-out split applies only while the gate judges the run (it has a held-out slice)."""
    dropped: list[Dropped] = []
    kept = cap_per_user(
        pairs, training.max_per_user, lambda pair, why: _drop(dropped, pair, why), ratings.per_user
    )
    rows = _merge(kept, dropped)
    fraction = gate.heldout_fraction if gate.enabled and ratings.heldout else 0.0
    train = [r for r in rows if not is_heldout(r.key, fraction)]
    heldout = [replace(r, split="heldout") for r in rows if is_heldout(r.key, fraction)]
    return CuratedPairs(train, heldout, dropped)


def _drop(dropped: list[Dropped], pair: PreferencePair, reason: str) -> None:
    dropped.append(Dropped(pair.rejected.exchange_id, pair.user_key, reason))


def _merge(pairs: Sequence[PreferencePair], dropped: list[Dropped]) -> list[PairRow]:
    """One row per preference; of two opposite ones the majority stays (a tie: neither)."""
    groups: dict[str, list[PreferencePair]] = {}
    for pair in pairs:
        texts = sorted((pair.chosen.completion, pair.rejected.completion))
        groups.setdefault(pair_key(pair.prompt, *texts), []).append(pair)
    rows = []
    for items in groups.values():
        votes = Counter(p.chosen.completion for p in items)
        (winner, most), *rest = votes.most_common()
        if rest and rest[0][1] == most:
            for pair in items:
                _drop(dropped, pair, "conflicting preferences")
            continue
        agree = [p for p in items if p.chosen.completion == winner]
        for pair in items:
            if pair.chosen.completion != winner:
                _drop(dropped, pair, "outvoted by the opposite preference")
            elif pair is not agree[0]:
                _drop(dropped, pair, "duplicates (merged)")
        rows.append(_row(agree[0], tuple(sorted({p.user_key for p in agree}))))
    return rows


def _row(pair: PreferencePair, users: tuple[str, ...]) -> PairRow:
    chosen, rejected = pair.chosen, pair.rejected
    return PairRow(
        pair.prompt,
        chosen.completion,
        rejected.completion,
        chosen.exchange_id,
        rejected.exchange_id,
        chosen.adapter_version,
        rejected.adapter_version,
        pair_key(pair.prompt, chosen.completion, rejected.completion),
        users,
    )
