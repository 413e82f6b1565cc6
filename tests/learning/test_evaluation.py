"""Held-out metrics and the gate's decision (pure functions)."""

from __future__ import annotations

import pytest

from bot.learning.evaluation import (
    RowScore,
    decide,
    liked_nll,
    metrics,
    preference_accuracy,
    reward_margin,
)
from bot.settings import GateSettings


def score(label: bool, per_token: float, tokens: int = 4, base: float = -8.0) -> RowScore:
    return RowScore(label, per_token * tokens, tokens, base)


def test_preference_accuracy_counts_pairs_ranked_right_ties_half() -> None:
    rows = [score(True, -1.0), score(True, -3.0), score(False, -2.0), score(False, -1.0)]
    # Pairs (liked, disliked): (-1,-2) right, (-1,-1) tie, (-3,-2) wrong, (-3,-1) wrong.
    assert preference_accuracy(rows) == pytest.approx(1.5 / 4)
    assert preference_accuracy([score(True, -1.0)]) is None  # nothing to rank against


def test_accuracy_is_length_normalised() -> None:
    long_liked = RowScore(True, -40.0, 40, 0.0)  # -1 per token, but a low total
    short_disliked = RowScore(False, -4.0, 2, 0.0)  # -2 per token
    assert preference_accuracy([long_liked, short_disliked]) == 1.0


def test_nll_and_reward_margin() -> None:
    rows = [
        RowScore(True, -6.0, 3, -9.0),
        RowScore(True, -2.0, 1, -2.0),
        RowScore(False, -10.0, 5, -8.0),
    ]
    assert liked_nll(rows) == pytest.approx(8.0 / 4)
    # Liked log-ratios 3 and 0 (mean 1.5), disliked -2: margin 0.1 * (1.5 + 2).
    assert reward_margin(rows, beta=0.1) == pytest.approx(0.35)
    assert set(metrics(rows, 0.1)) == {"preference_accuracy", "liked_nll", "reward_margin"}
    assert set(metrics(rows[:2], 0.1)) == {"liked_nll"}


GATE = GateSettings(metric="preference_accuracy", margin=0.02, min_heldout=4)


def test_the_gate_passes_a_candidate_not_worse_by_more_than_the_margin() -> None:
    current = {"preference_accuracy": 0.70, "liked_nll": 2.0}
    assert decide(current, {"preference_accuracy": 0.69}, 10, GATE).verdict == "pass"
    failed = decide(current, {"preference_accuracy": 0.60}, 10, GATE)
    assert failed.verdict == "fail" and failed.metric == "preference_accuracy"
    assert "0.600 vs 0.700" in failed.reason and "worse by 0.100 > margin 0.02" in failed.reason


def test_lower_is_better_for_nll_and_fallback_without_disliked_rows() -> None:
    gate = GATE.model_copy(update={"metric": "liked_nll"})
    assert decide({"liked_nll": 2.0}, {"liked_nll": 2.01}, 10, gate).verdict == "pass"
    assert decide({"liked_nll": 2.0}, {"liked_nll": 2.5}, 10, gate).verdict == "fail"
    # Accuracy asked for, but no disliked rows held out: NLL decides instead.
    fallback = decide({"liked_nll": 2.0}, {"liked_nll": 1.5}, 10, GATE)
    assert (fallback.verdict, fallback.metric) == ("pass", "liked_nll")


def test_too_few_rows_is_undecided() -> None:
    decision = decide({"preference_accuracy": 0.5}, {"preference_accuracy": 0.9}, 3, GATE)
    assert decision.verdict == "undecided" and "too few to judge" in decision.reason
    assert decide({}, {}, 10, GATE).verdict == "undecided"


def test_the_default_gate_metric_is_the_reward_margin() -> None:
    gate = GateSettings(min_heldout=4)
    assert gate.metric == "reward_margin"
    current = {"reward_margin": 0.0, "preference_accuracy": 0.6}
    better = decide(current, {"reward_margin": 1.9, "preference_accuracy": 0.55}, 10, gate)
    assert better.verdict == "pass" and better.reason.startswith("reward margin 1.900 vs 0.000")
    assert decide(current, {"reward_margin": -0.5}, 10, gate).verdict == "fail"


def test_the_gate_metrics_are_one_registry() -> None:
    from typing import get_args

    from bot.learning.evaluation import GATE_METRICS, gate_metric
    from bot.settings.learning import GateMetricName

    names = [m.name for m in GATE_METRICS]
    assert sorted(names) == sorted(get_args(GateMetricName))  # every choice of gate.metric
    assert names[0] == GateSettings().metric  # the default first
    rows = [RowScore(True, -6.0, 3, -9.0), RowScore(False, -10.0, 5, -8.0)]
    assert list(metrics(rows, 0.1)) == names  # each one computed from the scores
    nll = gate_metric("liked_nll")
    assert nll is not None and not nll.higher_is_better and nll.short == "liked NLL"
    assert gate_metric("train_loss") is None


def test_the_gate_reads_each_metrics_direction_from_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    import bot.learning.evaluation as evaluation

    gate = GateSettings(min_heldout=1, margin=0.0)
    current, candidate = {"reward_margin": 0.5}, {"reward_margin": 0.1}
    assert decide(current, candidate, 5, gate).verdict == "fail"
    flipped = replace(evaluation._BY_NAME["reward_margin"], higher_is_better=False)
    monkeypatch.setitem(evaluation._BY_NAME, "reward_margin", flipped)
    assert decide(current, candidate, 5, gate).verdict == "pass"


def test_a_candidate_no_better_than_the_base_is_not_called_better() -> None:
    gate = GateSettings(metric="preference_accuracy", min_heldout=4, min_gain=0.05)
    base = {"preference_accuracy": 0.50, "liked_nll": 2.0}
    same = decide(base, {"preference_accuracy": 0.52, "liked_nll": 2.0}, 10, gate, base=base)
    assert same.verdict == "fail" and "no better than the base model (0.500)" in same.reason
    moved = decide(base, {"preference_accuracy": 0.80, "liked_nll": 1.8}, 10, gate, base=base)
    assert moved.verdict == "pass"
    # A serving adapter that learned already: not worse than it, and still ahead of the base.
    serving = {"preference_accuracy": 0.80, "liked_nll": 1.8}
    again = decide(serving, {"preference_accuracy": 0.79, "liked_nll": 1.8}, 10, gate, base=base)
    assert again.verdict == "pass"


def test_a_candidate_that_damages_the_liked_replies_nll_fails() -> None:
    gate = GateSettings(metric="preference_accuracy", min_heldout=4, max_nll_rise=0.10)
    serving = {"preference_accuracy": 0.5, "liked_nll": 2.0}
    damaged = decide(serving, {"preference_accuracy": 0.9, "liked_nll": 2.3}, 10, gate)
    assert damaged.verdict == "fail" and "liked NLL 2.300 vs 2.000" in damaged.reason
    slight = decide(serving, {"preference_accuracy": 0.9, "liked_nll": 2.1}, 10, gate)
    assert slight.verdict == "pass"


def test_the_version_records_only_the_rows_the_trainer_says_it_used() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from bot.learning.release import trained_ids

    class Curated:
        def __init__(self) -> None:
            self.train = [
                SimpleNamespace(exchange_id=1, exchange_ids=(1, 7), label=True),
                SimpleNamespace(exchange_id=2, exchange_ids=(2,), label=False),
                SimpleNamespace(exchange_id=3, exchange_ids=(3,), label=True),
            ]

        def trained_ids(self, method: str) -> list[int]:
            return [i for r in self.train if r.label or method != "sft" for i in r.exchange_ids]

    def run(data: dict[str, Any], method: str = "kto") -> list[int]:
        trained = SimpleNamespace(
            curated=Curated(), method=method, result=SimpleNamespace(data=data)
        )
        return trained_ids(cast(Any, trained))

    assert run({}) == [1, 7, 2, 3]  # an older trainer: every curated row
    assert run({"trained_exchange_ids": [1, 2]}) == [1, 7, 2]  # merged ratings come along
    assert run({"trained_exchange_ids": [1, 2]}, method="sft") == [1, 7]  # SFT: 👍 only


def test_the_gate_fails_a_candidate_that_does_not_visibly_write_what_users_like() -> None:
    gate = GateSettings(min_heldout=4, min_share_gain=0.05)
    current = {"reward_margin": 0.0, "liked_share": 0.12}
    moved = {"reward_margin": 1.5, "liked_share": 0.40, "general_nll": 1.05}
    base = {"reward_margin": 0.0, "general_nll": 1.0}
    passed = decide(current, moved, 10, gate, base=base)
    assert passed.verdict == "pass"
    said = "its sampled replies 40.0% predicted 👍 vs 12.0% of the serving adapter's"
    assert said in passed.reason
    # The bench's "bulleted list" run: a good reward margin, fewer lists written.
    fewer = decide(current, moved | {"liked_share": 0.04}, 10, gate, base=base)
    assert fewer.verdict == "fail" and "users would not see it write what they like" in fewer.reason
    less = decide(current, moved | {"liked_share": 0.15}, 10, gate, base=base)
    assert less.verdict == "fail"  # < 5 points
    assert GateSettings().min_share_gain == 0.0  # by default: not lower than serving's
    same = decide(current, moved | {"liked_share": 0.12}, 10, GateSettings(min_heldout=4))
    assert same.verdict == "pass"
    # The base's replies to general prompts became much less likely: damage, whatever the
    # taste did; measured against the base, whatever the serving adapter's number.
    worse = moved | {"general_nll": 1.2}
    damaged = decide(current | {"general_nll": 1.2}, worse, 10, gate, base=base)
    assert damaged.verdict == "fail" and "gate.general_prompts have NLL 1.200" in damaged.reason
    assert "gate.max_general_nll_rise = 15%" in damaged.reason
    # Its own bound (15 %), not the liked replies' (10 %): a length taste's +12.7 % passes.
    assert decide(current, moved | {"general_nll": 1.127}, 10, gate, base=base).verdict == "pass"
    strict = gate.model_copy(update={"max_general_nll_rise": 0.10})
    assert decide(current, moved | {"general_nll": 1.127}, 10, strict, base=base).verdict == "fail"
    # Without a reward model (no 👍 to learn from, or it could not rank the held-out ratings)
    # the trainer sends only the general replies' NLL: it alone decides, then.
    alone = {"reward_margin": 0.0}
    kept = decide(alone, {"reward_margin": 2.6, "general_nll": 1.05}, 10, gate, base=base)
    assert kept.verdict == "pass"
    broke = decide(alone, {"reward_margin": 2.6, "general_nll": 1.19}, 10, gate, base=base)
    assert broke.verdict == "fail"
    assert decide({"reward_margin": 0.0}, {"reward_margin": 1.5}, 10, gate).verdict == "pass"
