"""A/B assignment and the significance tests (checked against published values)."""

from __future__ import annotations

import pytest

from bot.learning.ab_stats import assigned, compare, fisher_exact, z_test
from storage.abtests import VersionVotes


def test_assignment_is_stable_per_chat_and_close_to_the_share() -> None:
    chats = [f"telegram:{i}" for i in range(4000)]
    first = [assigned(c, 7, 0.2) for c in chats]
    assert first == [assigned(c, 7, 0.2) for c in chats]
    assert 0.18 < sum(first) / len(chats) < 0.22
    # A chat in a smaller share is also in any larger one (the same hash, another threshold).
    assert all(assigned(c, 7, 0.5) for c, inside in zip(chats, first, strict=True) if inside)
    # Another test reshuffles the chats.
    assert first != [assigned(c, 8, 0.2) for c in chats]
    assert not any(assigned(c, 7, 0.0) for c in chats)


def test_z_test() -> None:
    # 60/100 vs 45/100: pooled p 0.525, se 0.0706, z 2.124, two-sided p 0.0337.
    z, p = z_test(60, 100, 45, 100)
    assert z == pytest.approx(2.1239, abs=1e-3) and p == pytest.approx(0.0337, abs=5e-4)
    assert z_test(10, 10, 5, 5) == (0.0, 1.0)  # both all-👍: no evidence
    assert z_test(0, 0, 5, 9) == (0.0, 1.0)


def test_fisher_exact() -> None:
    # Fisher's tea-tasting table: two-sided p = 0.4857 (= 34/70).
    assert fisher_exact(3, 1, 1, 3) == pytest.approx(34 / 70)
    # scipy.stats.fisher_exact([[8, 2], [1, 5]]) → 0.03496503...
    assert fisher_exact(8, 2, 1, 5) == pytest.approx(0.034965, abs=1e-6)
    assert fisher_exact(0, 0, 0, 0) == 1.0


def test_compare_uses_fisher_for_small_counts_and_z_for_large() -> None:
    small = compare(VersionVotes(8, 2), VersionVotes(1, 5))
    assert small.method == "Fisher's exact test" and small.significant(0.05)
    large = compare(VersionVotes(60, 40), VersionVotes(45, 55))
    assert large.method == "z-test" and large.significant(0.05)
    assert not compare(VersionVotes(50, 50), VersionVotes(48, 52)).significant(0.05)
