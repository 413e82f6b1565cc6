"""Held-out metrics of an adapter and the gate that decides whether a candidate may go live.

No torch: the trainer scores each held-out row under the base model, the adapter serving now
and the candidate (log-probability of the reply, summed, and its token count); this module
turns the scores into metrics, and the orchestrator into a decision.

- preference accuracy: the share of (👍, 👎) pairs in which the liked reply has the higher
  per-token log-probability (ties count half): the chance that the model ranks a random liked
  reply above a random disliked one. Higher is better.
- liked NLL: negative log-likelihood per token of the liked replies. Lower is better.
- reward margin: KTO's implicit reward ``beta * (log p_model - log p_base)``, mean over liked
  minus mean over disliked replies. The base scores 0 by definition. Higher is better.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bot.settings import GateSettings

LOWER_IS_BETTER = frozenset({"liked_nll"})
FALLBACK_METRIC = "liked_nll"  # needs only liked rows: used when there are no disliked ones
Verdict = Literal["pass", "fail", "undecided"]


@dataclass(frozen=True)
class RowScore:
    """One held-out row under one model: its label, summed reply log-prob, reply tokens."""

    label: bool
    logp: float
    tokens: int
    base_logp: float  # the same reply under the base model (the KTO reference)


def preference_accuracy(scores: Sequence[RowScore]) -> float | None:
    liked = sorted(s.logp / max(1, s.tokens) for s in scores if s.label)
    disliked = [s.logp / max(1, s.tokens) for s in scores if not s.label]
    if not liked or not disliked:
        return None
    wins = 0.0
    for value in disliked:
        # Liked replies above this disliked one, by binary search: O(n log n) for big slices.
        below = bisect_left(liked, value)
        equal = bisect_right(liked, value) - below
        wins += len(liked) - below - equal + 0.5 * equal
    return wins / (len(liked) * len(disliked))


def liked_nll(scores: Sequence[RowScore]) -> float | None:
    liked = [s for s in scores if s.label]
    tokens = sum(s.tokens for s in liked)
    return -sum(s.logp for s in liked) / tokens if tokens else None


def reward_margin(scores: Sequence[RowScore], beta: float) -> float | None:
    liked = [beta * (s.logp - s.base_logp) for s in scores if s.label]
    disliked = [beta * (s.logp - s.base_logp) for s in scores if not s.label]
    if not liked or not disliked:
        return None
    return sum(liked) / len(liked) - sum(disliked) / len(disliked)


def metrics(scores: Sequence[RowScore], beta: float) -> dict[str, float]:
    """The three metrics; one that cannot be computed on these rows is left out."""
    values = {
        "preference_accuracy": preference_accuracy(scores),
        "liked_nll": liked_nll(scores),
        "reward_margin": reward_margin(scores, beta),
    }
    return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class GateDecision:
    verdict: Verdict
    reason: str
    metric: str | None = None
    current: float | None = None
    candidate: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "metric": self.metric,
            "current": self.current,
            "candidate": self.candidate,
        }


def decide(
    current: Mapping[str, float],
    candidate: Mapping[str, float],
    heldout: int,
    gate: GateSettings,
) -> GateDecision:
    """Pass when the candidate is not worse than the serving adapter by more than the margin."""
    if heldout < gate.min_heldout:
        return GateDecision(
            "undecided",
            f"the held-out slice has {heldout} rated repl{'y' if heldout == 1 else 'ies'}, "
            f"too few to judge (gate.min_heldout = {gate.min_heldout})",
        )
    metric: str = gate.metric
    if metric not in current or metric not in candidate:
        metric = FALLBACK_METRIC  # e.g. no 👎 held out: rank nothing, but NLL still works
    if metric not in current or metric not in candidate:
        return GateDecision("undecided", "no gate metric can be computed on the held-out slice")
    now, new = current[metric], candidate[metric]
    lower = metric in LOWER_IS_BETTER
    worse_by = (new - now) if lower else (now - new)
    name = metric.replace("_", " ")
    comparison = f"{name} {new:.3f} vs {now:.3f} serving now, on {heldout} held-out ratings"
    if worse_by > gate.margin:
        return GateDecision(
            "fail",
            f"{comparison}: worse by {worse_by:.3f} > margin {gate.margin}",
            metric,
            now,
            new,
        )
    return GateDecision("pass", comparison, metric, now, new)
