"""Preference pairs as a run's data: the per-user cap shared with ratings, merged duplicates,
opposite preferences, the held-out split and TRL's preference format."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from bot.learning.curation import Curated, Row
from bot.learning.pair_curation import curate_pairs, pair_key
from bot.settings import GateSettings, TrainingSettings
from bot.types import Turn
from storage.pairs import Alternative, PreferencePair

PROMPT = (Turn("system", "Be brief."), Turn("user", "Capital of France?"))
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def pair(
    user: str, chosen: str, rejected: str, *, minutes: int = 0, prompt: str = ""
) -> PreferencePair:
    turns = PROMPT if not prompt else (Turn("user", prompt),)
    return PreferencePair(
        user,
        turns,
        Alternative(hash(chosen) % 1000, chosen, 2),
        Alternative(hash(rejected) % 1000, rejected, None),
        T0 - timedelta(minutes=minutes),
    )


def ratings(per_user: dict[str, int] | None = None, heldout: bool = False) -> Curated:
    row = Row(PROMPT, "x", True, 1, "u", None, "k", (1,), ("u",))
    return Curated([], [row] if heldout else [], per_user=Counter(per_user or {}))


def test_pairs_share_the_per_user_cap_with_ratings() -> None:
    training = TrainingSettings(max_per_user=3)
    pairs = [pair("ann", "Paris", f"wrong {i}", minutes=i) for i in range(3)]
    pairs.append(pair("bob", "Paris", "Lyon"))
    curated = curate_pairs(pairs, training, GateSettings(), ratings({"ann": 2}))
    # Ann has 2 ratings in the run: only her newest pair fits the cap of 3.
    assert [r.rejected for r in curated.train if "ann" in r.users] == ["wrong 0"]
    assert [d.reason for d in curated.dropped] == ["over the per-user cap of 3"] * 2
    assert any(r.users == ("bob",) for r in curated.train)


def test_the_same_preference_is_one_row_and_a_tie_drops_both() -> None:
    same = [pair("ann", "Paris", "Lyon"), pair("bob", "Paris", "Lyon")]
    curated = curate_pairs(same, TrainingSettings(), GateSettings(), ratings())
    [row] = curated.train
    assert row.users == ("ann", "bob") and (row.chosen, row.rejected) == ("Paris", "Lyon")
    tie = [pair("ann", "Paris", "Lyon"), pair("bob", "Lyon", "Paris")]
    curated = curate_pairs(tie, TrainingSettings(), GateSettings(), ratings())
    assert curated.rows == []
    assert [d.reason for d in curated.dropped] == ["conflicting preferences"] * 2
    majority = [*same, pair("cid", "Lyon", "Paris")]
    curated = curate_pairs(majority, TrainingSettings(), GateSettings(), ratings())
    assert [(r.chosen, r.users) for r in curated.train] == [("Paris", ("ann", "bob"))]
    assert sorted(d.reason for d in curated.dropped) == [
        "duplicates (merged)",  # bob's, merged into ann's row
        "outvoted by the opposite preference",  # cid's
    ]


def test_held_out_by_hash_only_while_the_gate_judges_the_run() -> None:
    pairs = [pair(f"u{i}", "Paris", "Lyon", prompt=f"q{i}") for i in range(40)]
    gate = GateSettings(heldout_fraction=0.25)
    young = curate_pairs(pairs, TrainingSettings(), gate, ratings())
    assert young.heldout == [] and len(young.train) == 40
    judged = curate_pairs(pairs, TrainingSettings(), gate, ratings(heldout=True))
    assert 0 < len(judged.heldout) < 40
    assert {r.split for r in judged.heldout} == {"heldout"}
    again = curate_pairs(pairs, TrainingSettings(), gate, ratings(heldout=True))
    assert [r.key for r in again.heldout] == [r.key for r in judged.heldout]  # stable


def test_rows_are_trl_preference_rows_with_their_origin() -> None:
    [row] = curate_pairs(
        [pair("ann", "Paris", "Lyon")], TrainingSettings(), GateSettings(), ratings()
    ).train
    data = row.to_json()
    assert data["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert data["chosen"] == [{"role": "assistant", "content": "Paris"}]
    assert data["rejected"] == [{"role": "assistant", "content": "Lyon"}]
    assert data["chosen_adapter_version"] == 2 and data["rejected_adapter_version"] is None
    assert data["key"] == pair_key(PROMPT, "Paris", "Lyon") and data["split"] == "train"
