"""The pair rules: which replies to one prompt a user's votes (and corrections) rank above
which (storage.pairs)."""

from __future__ import annotations

from bot.types import Vote
from storage.pairs import Alternative, pair_up

A = Alternative(1, "first reply", None)
B = Alternative(2, "second reply", 3)
C = Alternative(3, "third reply", 3)


def ids(pairs: list[tuple[Alternative, Alternative]]) -> set[tuple[int, int]]:
    return {(chosen.exchange_id, rejected.exchange_id) for chosen, rejected in pairs}


def test_a_like_beats_every_alternative_not_also_liked() -> None:
    assert ids(pair_up([A, B, C], "u", {2: Vote.UP})) == {(2, 1), (2, 3)}
    assert ids(pair_up([A, B, C], "u", {1: Vote.UP, 2: Vote.UP})) == {(1, 3), (2, 3)}


def test_a_dislike_loses_to_every_alternative_not_also_disliked() -> None:
    assert ids(pair_up([A, B], "u", {1: Vote.DOWN})) == {(2, 1)}
    assert ids(pair_up([A, B, C], "u", {1: Vote.DOWN, 3: Vote.DOWN})) == {(2, 1), (2, 3)}


def test_like_and_dislike_make_one_pair() -> None:
    assert ids(pair_up([A, B], "u", {1: Vote.DOWN, 2: Vote.UP})) == {(2, 1)}


def test_no_vote_or_equal_votes_make_no_pair() -> None:
    assert pair_up([A, B], "u", {}) == []
    assert pair_up([A, B], "u", {1: Vote.UP, 2: Vote.UP}) == []
    assert pair_up([A, B], "u", {1: Vote.DOWN, 2: Vote.DOWN}) == []


def test_a_correction_beats_the_replies_even_a_liked_one_but_only_for_its_writer() -> None:
    fixed = Alternative(4, "what I wanted", None, corrected_by="u")
    assert ids(pair_up([A, fixed], "u", {1: Vote.UP, 4: Vote.UP})) == {(4, 1)}
    # Another user's vote: the correction is one more alternative, ranked by their votes.
    assert ids(pair_up([A, fixed], "v", {1: Vote.UP})) == {(1, 4)}
    assert pair_up([A, fixed], "v", {}) == []


def test_empty_and_identical_replies_never_pair() -> None:
    empty = Alternative(5, "  ", None)
    same = Alternative(6, "first reply", None)
    assert pair_up([A, empty], "u", {1: Vote.UP}) == []
    assert pair_up([A, same], "u", {1: Vote.UP}) == []
