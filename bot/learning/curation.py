"""Data checks before training: which ratings a run learns from, which it holds out, and why
the rest were dropped. No torch: the trainer does the token-level checks (bot.trainer.examples).

In order: empty replies go; each user keeps only their newest ``max_per_user`` ratings (nobody
dominates); ratings of the same text (prompt and reply) merge into one row labelled by the
majority of its votes (a tie drops it); then a stable hash of the text puts a row in the
held-out pool or the training set. The hash never changes, so a held-out row is never trained
on by any run, and the adapter serving now is compared with a candidate on rows neither saw.
While the pool is smaller than ``gate.min_heldout`` it cannot judge anything and is trained
on instead. Pool rows the serving adapter was trained on are not scored (they would flatter
it) nor trained on (so they can judge a later adapter that did not see them); the pool can judge
only if at least ``gate.min_heldout`` rows remain. A young bot, with too few rows for that, holds
out fewer (bot.learning.heldout): its first runs can be judged too. Every rating is accounted
for: trained on, scored, or in ``dropped`` with a reason ("held out: …" for pool rows this run
leaves unused).
Opted-out and forgotten users never reach this module: the repository leaves them out, and
their words in group members' prompts arrive already replaced.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, TypeVar

from bot.learning.heldout import (
    heldout_needed,
    is_heldout,
    is_young,
    ratings_to_judge,
    young_slice,
)
from bot.settings import GateSettings, TrainingSettings
from bot.types import RatedExchange, Turn, messages

__all__ = ["Curated", "Dropped", "Row", "content_key", "curate", "is_heldout"]
# Preference pairs are curated the same way: bot.learning.pair_curation.

SEEN_BY_SERVING = "held out: seen by serving adapter"
NOT_SAMPLED = "held out: not sampled this run"


@dataclass(frozen=True)
class Dropped:
    """A rating a run does not train on, and the reason."""

    exchange_id: int
    user_key: str
    reason: str


Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Row:
    """One distinct text (prompt and reply) of a run, labelled by the majority of its votes.

    ``exchange_id``, ``user_key`` and ``adapter_version`` are those of the rating that stands
    for the row; ``exchange_ids`` and ``users`` those of every rating merged into it.
    """

    prompt: tuple[Turn, ...]  # the exact context the model saw when it wrote the reply
    completion: str  # the reply
    label: bool  # 👍 (desirable) or 👎
    exchange_id: int
    user_key: str
    adapter_version: int | None  # the version that wrote the reply
    key: str  # content_key: the identity of the text, which also fixes its split
    exchange_ids: tuple[int, ...]
    users: tuple[str, ...]
    split: Split = "train"

    def to_json(self) -> dict[str, Any]:
        """The dataset row the trainer reads: TRL's conversational KTO format (``prompt``,
        ``completion``, ``label``) and the ids that say where it came from."""
        return {
            "prompt": messages(self.prompt),
            "completion": [{"role": "assistant", "content": self.completion}],
            "label": self.label,
            "exchange_id": self.exchange_id,
            "user_key": self.user_key,
            "adapter_version": self.adapter_version,
            "key": self.key,
            "exchange_ids": list(self.exchange_ids),
            "users": list(self.users),
            "split": self.split,
        }


@dataclass
class Curated:
    """The rows of one run: the training set and the held-out slice, and what was dropped."""

    train: list[Row]
    heldout: list[Row]
    dropped: list[Dropped] = field(default_factory=list)
    ratings: int = 0
    heldout_pool: int = 0  # held-out rows in all; ``heldout`` is this run's sample of them
    min_heldout: int = 8  # held-out rows the gate needs to judge this run (fewer while young)
    # With no held-out slice: about how many more rated replies the gate needs (None: never).
    to_judge: int | None = None
    # Ratings each user has in this run after the cap: their preference pairs share the cap.
    per_user: Counter[str] = field(default_factory=Counter)
    # The exchanges the run's preference pairs learn from (set once the pairs are curated):
    # trained on too, so a /forget of any of them marks the version.
    pair_exchange_ids: list[int] = field(default_factory=list)

    @property
    def rows(self) -> list[Row]:
        return self.train + self.heldout

    def sample_heldout(self, run_id: int, most: int) -> None:
        """Fix run ``run_id``'s held-out slice: at most ``most`` rows of the pool, a sample
        seeded by the run id. The rest of the pool stays held out: neither trained nor scored."""
        if len(self.heldout) > most:
            sample = random.Random(f"heldout:{run_id}").sample(self.heldout, most)
            chosen = {id(r) for r in sample}
            for row in self.heldout:
                if id(row) not in chosen:
                    _drop_row(self.dropped, row, NOT_SAMPLED)
            self.heldout = sample

    def counts(self, split: str) -> tuple[int, int]:
        rows = self.train if split == "train" else self.heldout
        liked = sum(1 for r in rows if r.label)
        return liked, len(rows) - liked

    def trained_ids(self, method: str) -> list[int]:
        """The exchanges a run of ``method`` learns from: SFT only from the 👍 rows; and the
        exchanges of its preference pairs."""
        rated = [i for r in self.train if r.label or method != "sft" for i in r.exchange_ids]
        return rated + [i for i in self.pair_exchange_ids if i not in set(rated)]

    def gate_note(self) -> str:
        """For the admin when this run cannot be judged: how many more ratings it takes."""
        if self.heldout or self.to_judge is None:
            return ""
        more = self.to_judge
        return (
            f"The gate can judge a run once there are about {more} more rated "
            f"repl{'y' if more == 1 else 'ies'} (new texts); until then a new adapter waits "
            "for /activate."
        )

    def report(self) -> dict[str, Any]:
        """What was used and what was dropped, and why (stored in the run report)."""
        reasons = Counter(d.reason for d in self.dropped)
        return {
            "ratings": self.ratings,
            "train": dict(zip(("liked", "disliked"), self.counts("train"), strict=True)),
            "heldout": dict(zip(("liked", "disliked"), self.counts("heldout"), strict=True)),
            "heldout_pool": self.heldout_pool,
            "heldout_exchange_ids": sorted(i for r in self.heldout for i in r.exchange_ids),
            "dropped": dict(sorted(reasons.items())),
            "users": len({u for r in self.rows for u in r.users}),
        }

    def summary(self, method: str = "kto") -> str:
        """One line for the admin; under SFT, which learns from 👍 only, the 👎 are said to
        be unused rather than counted as trained on."""
        liked, disliked = self.counts("train")
        held_l, held_d = self.counts("heldout")
        if method == "sft":
            trained = f"training on {liked} 👍" + (
                f" (SFT imitates 👍 only: {disliked} 👎 unused)" if disliked else ""
            )
        else:
            trained = f"training on {liked} 👍 / {disliked} 👎"
        unused = Counter(d.reason for d in self.dropped if d.reason.startswith("held out:"))
        reasons = Counter(d.reason for d in self.dropped if not d.reason.startswith("held out:"))
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        idle = ", ".join(
            f"{n} {reason.removeprefix('held out: ')}" for reason, n in sorted(unused.items())
        )
        return (
            f"{self.ratings} ratings → {trained}, "
            f"held out {held_l} 👍 / {held_d} 👎"
            + (f" (+{sum(unused.values())} held out, unused: {idle})" if idle else "")
            + (f"; dropped {sum(reasons.values())}: {dropped}" if dropped else "")
        )


def content_key(rated: RatedExchange) -> str:
    """Identity of a row's text: the same prompt and reply are the same example."""
    text = json.dumps(
        [[t.role, t.content] for t in rated.prompt] + [["assistant", rated.completion]],
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def curate(
    rated: Sequence[RatedExchange],
    training: TrainingSettings,
    gate: GateSettings,
    seen_by_serving: Iterable[int] = (),
) -> Curated:
    """Apply the checks to ``rated`` (newest first). ``seen_by_serving``: the exchanges the
    adapter serving now was trained on; held-out rows among them are not scored (they would
    flatter it). :meth:`Curated.sample_heldout` then fixes the run's slice."""
    dropped: list[Dropped] = []
    kept = [r for r in rated if r.completion.strip() or _drop(dropped, r, "empty replies")]
    kept = cap_per_user(kept, training.max_per_user, lambda item, why: _drop(dropped, item, why))
    rows = _merge_duplicates(kept, dropped)
    seen = set(seen_by_serving)
    unseen = [r for r in rows if not seen.intersection(r.exchange_ids)]
    if is_young(len(rows), gate):
        train, heldout, pool = _young(rows, unseen, gate)
    else:
        train, heldout, pool = _by_hash(rows, seen, gate, dropped)
    held = [replace(r, split="heldout") for r in heldout]
    to_judge = None if held else ratings_to_judge(len(rows), len(unseen), gate)
    needed = heldout_needed(len(rows), gate)
    per_user = Counter(r.user_key for r in kept)
    return Curated(train, held, dropped, len(rated), len(pool), needed, to_judge, per_user=per_user)


_Sides = tuple[list[Row], list[Row], list[Row]]  # train, held out (scored), the held-out pool


def _young(rows: list[Row], unseen: list[Row], gate: GateSettings) -> _Sides:
    """A young bot: a small slice of unseen rows, or all trained on when even that is too many."""
    heldout = young_slice(rows, unseen, gate)
    chosen = {id(r) for r in heldout}
    return [r for r in rows if id(r) not in chosen], heldout, heldout


def _by_hash(rows: list[Row], seen: set[int], gate: GateSettings, dropped: list[Dropped]) -> _Sides:
    """The hash pool; pool rows the serving adapter saw are neither scored nor trained on."""
    fraction = gate.heldout_fraction if gate.enabled else 0.0
    train = [r for r in rows if not is_heldout(r.key, fraction)]
    pool = [r for r in rows if is_heldout(r.key, fraction)]
    heldout = [r for r in pool if not seen.intersection(r.exchange_ids)]
    if len(heldout) < gate.min_heldout:
        # Too few rows the serving adapter did not see to judge with: better trained on than
        # wasted (the gate then cannot judge this run).
        return rows, [], []
    for row in pool:
        if seen.intersection(row.exchange_ids):
            _drop_row(dropped, row, SEEN_BY_SERVING)
    return train, heldout, pool


def _drop(dropped: list[Dropped], rated: RatedExchange, reason: str) -> bool:
    dropped.append(Dropped(rated.exchange_id, rated.user_key, reason))
    return False


def _drop_row(dropped: list[Dropped], row: Row, reason: str) -> None:
    """A merged row left unused: it stands for one rating (the others are "duplicates")."""
    dropped.append(Dropped(row.exchange_id, row.user_key, reason))


class _HasUser(Protocol):
    @property
    def user_key(self) -> str: ...


_U = TypeVar("_U", bound=_HasUser)


def cap_per_user(
    items: Iterable[_U],
    cap: int,
    drop: Callable[[_U, str], object],
    used: Counter[str] | None = None,
) -> list[_U]:
    """Each user keeps their first ``cap`` of ``items`` (newest first: their newest), counting
    the ``used`` they already have (a user's pairs share the cap with their ratings); ``drop``
    is told of the others, with the reason."""
    seen = Counter(used or {})
    kept = []
    for item in items:
        seen[item.user_key] += 1
        if seen[item.user_key] <= cap:
            kept.append(item)
        else:
            drop(item, f"over the per-user cap of {cap}")
    return kept


def _merge_duplicates(rated: Sequence[RatedExchange], dropped: list[Dropped]) -> list[Row]:
    """One row per distinct text, labelled by the majority of its votes; ties are dropped."""
    groups: dict[str, list[RatedExchange]] = {}
    for item in rated:
        groups.setdefault(content_key(item), []).append(item)
    rows = []
    for key, items in groups.items():
        ups = sum(1 for i in items if i.label)
        if ups * 2 == len(items):
            for item in items:
                _drop(dropped, item, "conflicting votes")
            continue
        label = ups * 2 > len(items)
        first = next(i for i in items if i.label == label)
        for item in items:
            if item is not first:
                _drop(dropped, item, "duplicates (merged)")
        rows.append(
            Row(
                first.prompt,
                first.completion,
                label,
                first.exchange_id,
                first.user_key,
                first.adapter_version,
                key,
                exchange_ids=tuple(sorted({i.exchange_id for i in items})),
                users=tuple(sorted({i.user_key for i in items})),
            )
        )
    return rows
