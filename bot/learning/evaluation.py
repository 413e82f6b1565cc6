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

Each is one entry of :data:`GATE_METRICS` (its name, labels, direction and how it is computed
from the scores); the gate, ``/adapters`` and ``selftune adapters`` read them from there. A new
metric is one entry here and its name in ``GateSettings.metric``'s choices.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.settings import GateSettings
from bot.settings.learning import GateMetricName

FALLBACK_METRIC: GateMetricName = "liked_nll"  # needs only liked rows: used without 👎 held out
Verdict = Literal["pass", "fail", "undecided"]


@dataclass(frozen=True)
class RowScore:
    """One held-out row under one model: its label, summed reply log-prob, reply tokens."""

    label: bool
    logp: float
    tokens: int
    base_logp: float  # the same reply under the base model (the KTO reference)


def preference_accuracy(scores: Sequence[RowScore]) -> float | None:
    """The share of (👍, 👎) pairs where the 👍 reply has the higher per-token log-probability (ties
    count half); None without both labels."""
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
    """The mean per-token negative log-likelihood of the 👍 replies; None when there are none."""
    liked = [s for s in scores if s.label]
    tokens = sum(s.tokens for s in liked)
    return -sum(s.logp for s in liked) / tokens if tokens else None


def reward_margin(scores: Sequence[RowScore], beta: float) -> float | None:
    """The KTO implicit reward (``beta`` × log-ratio to the base) of 👍 minus 👎 replies, averaged;
    None without both labels."""
    liked = [beta * (s.logp - s.base_logp) for s in scores if s.label]
    disliked = [beta * (s.logp - s.base_logp) for s in scores if not s.label]
    if not liked or not disliked:
        return None
    return sum(liked) / len(liked) - sum(disliked) / len(disliked)


@dataclass(frozen=True)
class GateMetric:
    """A held-out metric the gate can decide on."""

    name: GateMetricName  # the key in evaluations, metrics and the ``gate.metric`` setting
    label: str  # in the gate's reasons: "reward margin 0.310 vs 0.300 serving now"
    short: str  # in the lists of versions (/adapters, ``selftune adapters``)
    higher_is_better: bool
    compute: Callable[[Sequence[RowScore], float], float | None]  # (scores, KTO's beta)


GATE_METRICS: tuple[GateMetric, ...] = (  # the default (``GateSettings.metric``) first
    GateMetric("reward_margin", "reward margin", "reward margin", True, reward_margin),
    GateMetric(
        "preference_accuracy",
        "preference accuracy",
        "pref. acc.",
        True,
        lambda scores, _beta: preference_accuracy(scores),
    ),
    GateMetric("liked_nll", "liked nll", "liked NLL", False, lambda s, _beta: liked_nll(s)),
)
_BY_NAME: dict[str, GateMetric] = {m.name: m for m in GATE_METRICS}


def gate_metric(name: str) -> GateMetric | None:
    """The registry's entry named ``name``, or None for a number that is not a gate metric."""
    return _BY_NAME.get(name)


def metrics(scores: Sequence[RowScore], beta: float) -> dict[str, float]:
    """Every gate metric; one that cannot be computed on these rows is left out."""
    values = {m.name: m.compute(scores, beta) for m in GATE_METRICS}
    return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class Evaluation:
    """The held-out slice scored under the base model, the LoRA serving when the run started
    and the candidate: each one's metrics, and the slice's size."""

    base: dict[str, float] = field(default_factory=dict)
    serving: dict[str, float] = field(default_factory=dict)
    candidate: dict[str, float] = field(default_factory=dict)
    liked: int = 0
    disliked: int = 0

    @property
    def heldout(self) -> int:
        return self.liked + self.disliked

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the ``done`` event and the run report (the serving LoRA's
        numbers under ``current``, as stored since the first gate)."""
        return {
            "base": self.base,
            "current": self.serving,
            "candidate": self.candidate,
            "heldout": {"liked": self.liked, "disliked": self.disliked},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """The inverse of :meth:`to_dict`; raises KeyError, TypeError or ValueError."""

        def numbers(key: str) -> dict[str, float]:
            return {str(k): float(v) for k, v in dict(data[key]).items()}

        heldout = data["heldout"]
        return cls(
            numbers("base"),
            numbers("current"),
            numbers("candidate"),
            int(heldout["liked"]),
            int(heldout["disliked"]),
        )


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on a candidate, why, and the metric values it compared."""

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
    min_heldout: int | None = None,
    base: Mapping[str, float] | None = None,
) -> GateDecision:
    """Pass a candidate that has learned something and broken nothing: not worse than the
    serving adapter by more than ``gate.margin``; better than the base model by at least
    ``gate.min_gain`` (when the base's numbers are given): a candidate that does not move the
    held-out ratings is not called better; its liked NLL not ``gate.max_nll_rise`` (a share)
    above the serving adapter's: a candidate that damages the language is not either; and,
    when the trainer looked at what it writes (bot.trainer.visible), its sampled replies not
    predicted liked less often than the serving adapter's and the base's replies to general
    prompts not ``gate.max_general_nll_rise`` less likely (``_visible_problem``).

    ``min_heldout``: the held-out rows this run needs (fewer for a young bot,
    bot.learning.heldout); default ``gate.min_heldout``.
    """
    needed = gate.min_heldout if min_heldout is None else min_heldout
    if heldout < needed:
        setting = (
            f"gate.min_heldout = {needed}"
            if needed == gate.min_heldout
            else f"a young bot's gate needs {needed}"
        )
        return GateDecision(
            "undecided",
            f"the held-out slice has {heldout} rated repl{'y' if heldout == 1 else 'ies'}, "
            f"too few to judge ({setting})",
        )
    metric = _BY_NAME[gate.metric]
    if metric.name not in current or metric.name not in candidate:
        metric = _BY_NAME[FALLBACK_METRIC]  # e.g. no 👎 held out: rank nothing, NLL still works
    if metric.name not in current or metric.name not in candidate:
        return GateDecision("undecided", "no gate metric can be computed on the held-out slice")
    now, new = current[metric.name], candidate[metric.name]
    comparison = f"{metric.label} {new:.3f} vs {now:.3f} serving now, on {heldout} held-out ratings"
    if "liked_share" in current and "liked_share" in candidate:
        comparison += (
            f"; its sampled replies {candidate['liked_share']:.1%} predicted 👍 vs "
            f"{current['liked_share']:.1%} of the serving adapter's"
        )
    problem = _problem(metric, current, candidate, base or {}, gate)
    if problem:
        return GateDecision("fail", f"{comparison}: {problem}", metric.name, now, new)
    return GateDecision("pass", comparison, metric.name, now, new)


def _problem(
    metric: GateMetric,
    current: Mapping[str, float],
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    gate: GateSettings,
) -> str | None:
    """Why the candidate fails the gate, or None."""
    name = metric.name
    sign = 1.0 if metric.higher_is_better else -1.0
    worse_by = sign * (current[name] - candidate[name])
    if worse_by > gate.margin:
        return f"worse by {worse_by:.3f} > margin {gate.margin}"
    if name in base and sign * (candidate[name] - base[name]) < gate.min_gain:
        return (
            f"no better than the base model ({base[name]:.3f}) by gate.min_gain = "
            f"{gate.min_gain}: it has not learned the ratings"
        )
    nll_now, nll_new = current.get("liked_nll"), candidate.get("liked_nll")
    if nll_now is not None and nll_new is not None and nll_new > nll_now * (1 + gate.max_nll_rise):
        return (
            f"liked NLL {nll_new:.3f} vs {nll_now:.3f} serving now: up more than "
            f"gate.max_nll_rise = {gate.max_nll_rise:.0%}"
        )
    return _visible_problem(current, candidate, base, gate)


def _visible_problem(
    current: Mapping[str, float],
    candidate: Mapping[str, float],
    base: Mapping[str, float],
    gate: GateSettings,
) -> str | None:
    """Why what the candidate writes fails (bot.trainer.visible), or None: the reward model
    learned from the ratings does not predict its sampled replies liked more often than the
    serving adapter's replies to the same prompts, or the base model's greedy replies to
    general prompts became much less likely (damage)."""
    share_now, share_new = current.get("liked_share"), candidate.get("liked_share")
    if (
        share_now is not None
        and share_new is not None
        and share_new < share_now + gate.min_share_gain
    ):
        return (
            f"users would not see it write what they like: the reward model learned from "
            f"the ratings predicts {share_new:.1%} of its sampled replies liked vs "
            f"{share_now:.1%} of the serving adapter's, not gate.min_share_gain = "
            f"{gate.min_share_gain:.0%} more"
        )
    said_base, said_new = base.get("general_nll"), candidate.get("general_nll")
    if (
        said_base is not None
        and said_new is not None
        and said_new > said_base * (1 + gate.max_general_nll_rise)
    ):
        return (
            f"the base model's greedy replies to gate.general_prompts have NLL {said_new:.3f} "
            f"under it vs {said_base:.3f} under the base: up more than "
            f"gate.max_general_nll_rise = {gate.max_general_nll_rise:.0%} (damage to what the "
            "bot says in general)"
        )
    return None
