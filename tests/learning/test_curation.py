"""Data checks before training: duplicates, the per-user cap, the held-out split, the report."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.learning.curation import content_key, curate, is_heldout
from bot.learning.dataset import kto_row
from bot.settings import GateSettings, TrainingSettings
from bot.types import RatedExchange, Turn

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NO_HOLDOUT = GateSettings(heldout_fraction=0.0)


def rated(
    exchange_id: int, user: str = "t:1", label: bool = True, text: str | None = None
) -> RatedExchange:
    question = text if text is not None else f"question {exchange_id}"
    return RatedExchange(
        exchange_id=exchange_id,
        user_key=user,
        prompt=(Turn("system", "Be brief."), Turn("user", question)),
        completion=f"answer to {question}",
        label=label,
        adapter_version=None,
        rated_at=NOW,
    )


def test_duplicates_merge_by_majority_and_ties_are_dropped() -> None:
    rows = [
        rated(1, "t:1", True, text="same"),
        rated(1, "t:2", True, text="same"),  # the same exchange rated by two users
        rated(2, "t:3", False, text="same"),  # the same text answered again, disliked
        rated(3, "t:1", True, text="split"),
        rated(4, "t:2", False, text="split"),
        rated(5, "t:1", False),
    ]
    curated = curate(rows, TrainingSettings(), NO_HOLDOUT)
    by_ids = {r.exchange_ids: r for r in curated.train}
    assert set(by_ids) == {(1, 2), (5,)}
    assert by_ids[(1, 2)].label is True and by_ids[(1, 2)].users == ("t:1", "t:2", "t:3")
    assert by_ids[(5,)].label is False
    reasons = sorted(d.reason for d in curated.dropped)
    assert reasons == ["conflicting votes"] * 2 + ["duplicates (merged)"] * 2
    assert curated.report()["dropped"] == {"conflicting votes": 2, "duplicates (merged)": 2}


def test_one_user_cannot_dominate() -> None:
    rows = [rated(i, "t:loud") for i in range(10)] + [rated(100 + i, "t:quiet") for i in range(3)]
    curated = curate(rows, TrainingSettings(max_per_user=4), NO_HOLDOUT)
    users = [u for r in curated.train for u in r.users]
    assert users.count("t:loud") == 4 and users.count("t:quiet") == 3
    # The newest ratings (first in the input) are the ones kept.
    assert {i for r in curated.train for i in r.exchange_ids} >= {0, 1, 2, 3}
    assert [d.reason for d in curated.dropped] == ["over the per-user cap of 4"] * 6


def test_empty_replies_are_dropped() -> None:
    empty = RatedExchange(7, "t:1", (Turn("user", "hi"),), "  ", True, None, NOW)
    curated = curate([empty, rated(1)], TrainingSettings(), NO_HOLDOUT)
    assert [d.reason for d in curated.dropped] == ["empty replies"]
    assert curated.summary().endswith("dropped 1: 1 empty replies")


def test_the_split_is_stable_and_never_trains_on_heldout_rows() -> None:
    gate = GateSettings(heldout_fraction=0.3, min_heldout=1)
    rows = [rated(i, f"t:{i % 7}", label=i % 3 == 0) for i in range(300)]
    first = curate(rows, TrainingSettings(max_per_user=1000), gate)
    again = curate(list(reversed(rows)), TrainingSettings(max_per_user=1000), gate)
    ids = {frozenset(i for r in c.heldout for i in r.exchange_ids) for c in (first, again)}
    assert len(ids) == 1  # the same rows are held out whatever the order
    held = next(iter(ids))
    trained = {i for r in first.train for i in r.exchange_ids}
    assert not held & trained
    assert 60 <= len(held) <= 120  # ~30 % of 300
    assert all(is_heldout(r.key, 0.3) for r in first.heldout)
    assert all(r.split == "heldout" for r in first.heldout)
    assert all(r.split == "train" for r in first.train)
    assert first.report()["heldout_exchange_ids"] == sorted(held)


def test_a_run_samples_its_slice_by_run_id() -> None:
    gate = GateSettings(heldout_fraction=0.5, min_heldout=1)
    rows = [rated(i) for i in range(200)]
    slices = []
    for run_id in (1, 1, 2):
        curated = curate(rows, TrainingSettings(max_per_user=1000), gate)
        pool = len(curated.heldout)
        curated.sample_heldout(run_id, 20)
        assert len(curated.heldout) == 20 and curated.heldout_pool == pool > 20
        slices.append({r.exchange_ids[0] for r in curated.heldout})
    assert slices[0] == slices[1] != slices[2]


def test_a_small_pool_is_trained_on_and_rows_the_serving_adapter_saw_are_not_scored() -> None:
    rows = [rated(i) for i in range(20)]
    # heldout_floor 0: no young gate (tests/learning/test_heldout.py has that one).
    classic = GateSettings(heldout_fraction=0.2, min_heldout=50, heldout_floor=0)
    small = curate(rows, TrainingSettings(), classic)
    assert small.heldout == [] and len(small.train) == 20
    gate = GateSettings(heldout_fraction=0.5, min_heldout=1)
    pool = curate(rows, TrainingSettings(), gate).heldout
    seen = {pool[0].exchange_ids[0]}
    curated = curate(rows, TrainingSettings(), gate, seen_by_serving=seen)
    assert len(curated.heldout) == len(pool) - 1
    assert not {i for r in curated.train for i in r.exchange_ids} & seen  # nor trained


def test_content_key_depends_on_prompt_and_reply() -> None:
    a, b = rated(1, text="x"), rated(2, text="x")
    assert content_key(a) == content_key(b)
    assert content_key(a) != content_key(rated(3, text="y"))


def test_min_heldout_counts_only_rows_the_serving_adapter_did_not_see() -> None:
    rows = [rated(i) for i in range(40)]
    gate = GateSettings(heldout_fraction=0.5, min_heldout=5)
    pool = curate(rows, TrainingSettings(), gate).heldout
    assert len(pool) >= 8
    # The serving adapter saw all but 3 pool rows: too few left to judge, so none is wasted.
    seen = {i for r in pool[3:] for i in r.exchange_ids}
    curated = curate(rows, TrainingSettings(), gate, seen_by_serving=seen)
    assert curated.heldout == [] and len(curated.train) == 40
    assert curated.dropped == [] and curated.heldout_pool == 0
    assert all(r.split == "train" for r in curated.train)


def test_every_rating_is_accounted_for_in_the_report() -> None:
    rows = [rated(i, f"t:{i % 5}") for i in range(120)] + [rated(500, text="question 1")]
    gate = GateSettings(heldout_fraction=0.5, min_heldout=2)
    training = TrainingSettings(max_per_user=1000)
    pool = curate(rows, training, gate).heldout
    seen = {i for r in pool[:4] for i in r.exchange_ids}
    curated = curate(rows, training, gate, seen_by_serving=seen)
    curated.sample_heldout(run_id=1, most=10)
    report = curated.report()
    unsampled = len(pool) - 4 - 10
    assert report["dropped"] == {
        "duplicates (merged)": 1,
        "held out: not sampled this run": unsampled,
        "held out: seen by serving adapter": 4,
    }
    used = sum(report["train"].values()) + sum(report["heldout"].values())
    assert used + sum(report["dropped"].values()) == report["ratings"] == 121
    assert not {i for r in curated.train for i in r.exchange_ids} & seen
    assert (
        f"(+{unsampled + 4} held out, unused: {unsampled} not sampled this run, "
        "4 seen by serving adapter); dropped 1: 1 duplicates (merged)"
    ) in curated.summary()


def test_rows_are_written_in_trls_kto_format_with_their_ids() -> None:
    rows = [rated(1, "t:2", text="same"), rated(2, "t:1", text="same"), rated(3, "t:1", False)]
    curated = curate(rows, TrainingSettings(), NO_HOLDOUT)
    merged = curated.train[0].to_json()
    assert merged == {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "same"},
        ],
        "completion": [{"role": "assistant", "content": "answer to same"}],
        "label": True,
        "exchange_id": 1,
        "user_key": "t:2",
        "adapter_version": None,
        "key": content_key(rows[0]),
        "exchange_ids": [1, 2],
        "users": ["t:1", "t:2"],
        "split": "train",
    }
    assert list(merged) == list(kto_row(rows[0])) + list(merged)[3:]  # TRL's keys first
    assert curated.train[1].to_json()["label"] is False
