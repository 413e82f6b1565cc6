"""bench/taste.py's table: the gate's look at the replies per run, and whether its verdict
agrees with the measured taste change."""

from __future__ import annotations

from typing import Any

from bench.taste import row, summary, truth, visible


def run(before: float, after: float, rise: float, verdict: str, **metrics: float) -> dict[str, Any]:
    return {
        "taste": "bullets",
        "seed": 1,
        "votes": {"up": 18, "down": 182},
        "before": before,
        "after": after,
        "gate": {"verdict": verdict, "metric": "reward_margin", "candidate": 1.5},
        "nll": {"neutral_base": 1.0, "neutral_after": 1.0 + rise},
        "metrics": metrics,
        "seconds": {"fine-tune to live": 190.0},
    }


def test_the_measured_change_calls_for_a_verdict() -> None:
    assert truth(run(0.10, 0.40, 0.05, "pass")) == "pass"
    assert truth(run(0.188, 0.083, -0.02, "pass")) == "fail"  # the taste fell
    assert truth(run(0.02, 0.30, 0.153, "pass")) == "fail"  # it moved, with damage


def test_the_summary_counts_the_runs_where_the_gate_agrees() -> None:
    runs = [
        ("ours", run(0.10, 0.40, 0.05, "pass")),
        ("ours", run(0.188, 0.083, -0.02, "fail")),
        ("ours", run(0.02, 0.30, 0.153, "pass")),
        ("today", run(0.188, 0.083, -0.02, "pass")),
    ]
    lines = summary(runs)
    assert any(
        line.startswith("ours   the gate agrees") and "in 2 of 3 runs" in line for line in lines
    )
    assert any("today" in line and "in 0 of 1 runs" in line for line in lines)


def test_each_row_shows_the_look_at_the_replies() -> None:
    seen = {"reward_auc": 0.8, "serving.liked_share": 0.037, "liked_share": 0.004}
    seen |= {"base.general_nll": 1.0, "general_nll": 0.94}
    assert visible(seen) == "RM AUC 0.80 pred. 👍 4→0% general NLL -6.0%"
    assert visible({}) == "(no look at the replies)"
    line = row("ours", run(0.188, 0.042, -0.02, "fail", **seen))
    assert "18.8% →   4.2%" in line and "fail" in line and "pred. 👍 4→0%" in line


def test_a_user_corrects_a_reply_into_one_their_taste_likes() -> None:
    from bench.taste_data import TASTE_NAMES, sentences, taste

    cut = (
        "Honey is made by bees from nectar. I love it on toast, and it keeps for years. It "
        "can be raw or filtered, and its flavour depends on the flowers the bees visit, and"
    )
    assert sentences(cut)[-1].endswith("years.")  # a reply cut at its limit loses its stub
    for name in TASTE_NAMES:
        judge = taste(name, max_words=20)
        wanted = judge.correction(cut)
        if name == "long":
            assert wanted is None  # nobody writes the longer reply they wanted
            continue
        assert wanted is not None and judge.likes(wanted) and not judge.likes(cut), name
    assert taste("question").correction(cut) == (
        "Honey is made by bees from nectar. I love it on toast, and it keeps for years. "
        "What do you think?"
    )
    assert taste("impersonal").correction("I like it. Me too.") is None  # nothing left
