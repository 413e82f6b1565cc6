"""A/B tests: a candidate adapter serves a share of chats next to the live one; 👍-rates of the
two groups are compared with a significance test; an admin promotes or retires it.

Chats, not messages, are assigned (a stable hash of the chat key and the test id), so a
conversation never switches adapters mid-way. Votes within a chat are not independent, so
treat a p-value near the threshold with care; the counts are shown next to it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from storage.abtests import ABTest, VersionVotes

CANDIDATE_SLOT = "candidate"
_FISHER_BELOW = 5.0  # smallest expected cell count for which the normal approximation holds


def assigned(chat_key: str, test_id: int, share: float) -> bool:
    """Whether ``chat_key`` is served by test ``test_id``'s candidate (stable, uniform)."""
    digest = hashlib.sha256(f"ab:{test_id}:{chat_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def z_test(ups_a: int, n_a: int, ups_b: int, n_b: int) -> tuple[float, float]:
    """Two-proportion z-test with pooled variance: (z, two-sided p-value)."""
    if n_a == 0 or n_b == 0:
        return 0.0, 1.0
    pooled = (ups_a + ups_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0  # both all-👍 or all-👎: no evidence of a difference
    z = (ups_a / n_a - ups_b / n_b) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test on the 2×2 table [[a, b], [c, d]]: the
    probability, with the margins fixed, of a table no likelier than the one observed."""
    row, other_row, col = a + b, c + d, a + c
    n = row + other_row
    if n == 0:
        return 1.0
    total = math.comb(n, col)

    def weight(x: int) -> int:
        return math.comb(row, x) * math.comb(other_row, col - x)

    observed = weight(a)
    low, high = max(0, col - other_row), min(row, col)
    # Integer weights: the comparison is exact (floats would need a tolerance).
    extreme = sum(w for w in (weight(x) for x in range(low, high + 1)) if w <= observed)
    return min(1.0, extreme / total)


@dataclass(frozen=True)
class Comparison:
    """The outcome of a two-group test of 👍-rates: both groups, the p-value and the test used."""

    candidate: VersionVotes
    control: VersionVotes
    p_value: float
    method: str  # "z-test" or "Fisher's exact test"

    def significant(self, alpha: float) -> bool:
        return self.p_value < alpha


def compare(candidate: VersionVotes, control: VersionVotes) -> Comparison:
    """👍-rates of the two groups; Fisher's exact test when counts are small, else the z-test."""
    n = candidate.total + control.total
    ups = candidate.ups + control.ups
    expected = [
        group.total * share / n if n else 0.0
        for group in (candidate, control)
        for share in (ups, n - ups)
    ]
    if min(expected) < _FISHER_BELOW:
        p = fisher_exact(candidate.ups, candidate.downs, control.ups, control.downs)
        return Comparison(candidate, control, p, "Fisher's exact test")
    _, p = z_test(candidate.ups, candidate.total, control.ups, control.total)
    return Comparison(candidate, control, p, "z-test")


def _rate(votes: VersionVotes) -> str:
    if not votes.total:
        return "no votes yet"
    return f"👍 {votes.ups}/{votes.total} ({100 * votes.ups / votes.total:.0f}%)"


def describe(test: ABTest, comparison: Comparison, alpha: float) -> str:
    """The A/B test in a few lines, for /status and /ab."""
    control = "the base model" if test.control is None else f"v{test.control}"
    lines = [
        f"A/B test #{test.id}: v{test.candidate} serves {100 * test.share:.0f}% of chats since "
        f"{test.started_at:%Y-%m-%d %H:%M} UTC; the others get {control}.",
        f"  v{test.candidate}: {_rate(comparison.candidate)}; others: {_rate(comparison.control)}",
    ]
    verdict = (
        "significant" if comparison.significant(alpha) else "not significant (yet)"
    ) + f" at {alpha}"
    lines.append(f"  {comparison.method}: p = {comparison.p_value:.3g}, {verdict}.")
    lines.append("  /ab promote makes it live for everyone; /ab retire ends it.")
    return "\n".join(lines)
