"""The serving bench's report: ratios to the best anchor, bandwidth shares, targets."""

from __future__ import annotations

from bench.serving_report import (
    Bandwidth,
    SystemResult,
    bandwidth_lines,
    best_anchor,
    target_lines,
    workload_table,
)
from bench.serving_workloads import Summary


def _systems() -> list[SystemResult]:
    return [
        SystemResult("ours", False, {"chat-16": Summary(100, 300.0, 0.2, 0.8, 0)}, 900.0),
        SystemResult("llama 1t", True, {"chat-16": Summary(100, 100.0, 0.1, 0.2, 0)}, 300.0),
        SystemResult("llama 2t", True, {"chat-16": Summary(100, 150.0, 0.1, 0.2, 1)}, 310.0),
        SystemResult("vllm", True, {}, 2000.0),
    ]


def test_the_best_anchor_is_the_fastest_on_that_workload() -> None:
    systems = _systems()
    assert best_anchor(systems, "chat-16") is systems[2]
    assert best_anchor(systems, "fixed-16") is None


def test_a_table_has_a_row_per_system_that_ran_it_with_its_ratio() -> None:
    lines = workload_table(_systems(), "chat-16", "Chat")
    assert lines[0] == "### Chat (best anchor: llama 2t)"
    rows = [line for line in lines if line.startswith(("| ours", "| llama"))]
    assert len(rows) == 3
    assert rows[0] == "| ours | 300.0 | 2.00 | 0.20 | 0.80 | 900 | 100 |"
    assert "1 rows with another token count" in rows[2]


def test_a_lone_reply_is_a_share_of_both_bandwidth_limits() -> None:
    bandwidth = Bandwidth(20.0, 30.0, 2, 200_000_000)
    assert bandwidth.limit(20.0) == 100.0
    text = "\n".join(bandwidth_lines(bandwidth, {"ours": 50.0}))
    assert "| ours | 50.0 | 50% | 33% |" in text
    assert "limit 100 tok/s" in text and "limit 150 tok/s" in text


def test_targets_say_met_or_short() -> None:
    text = "\n".join(target_lines(_systems(), "ours"))
    assert "chat-16: 2.00× the best anchor (target ≥ 1.5×: met)" in text
    assert "chat-16: TTFT p95 0.80 s (target < 1 s: met)" in text
    assert target_lines(_systems(), "nobody") == []
