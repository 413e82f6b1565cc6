"""The serving bench's workloads, timing and token accounting (bench/serving_workloads.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from bench.serving_workloads import (
    Measured,
    Piece,
    Served,
    Summary,
    Workload,
    measure,
    median_summary,
    questions,
    summarize,
    workload,
)
from bot.types import Turn


def test_questions_are_distinct_even_past_the_benches_list() -> None:
    asked = questions(40)
    assert len(asked) == len(set(asked)) == 40


def test_fixed_rows_have_no_system_prompt_and_chat_replies_the_bots() -> None:
    fixed = workload("fixed", 3, 3, 64, "Be nice.")
    chat = workload("chat", 3, 3, 64, "Be nice.")
    assert all(turns[0].role == "user" for turns in fixed.requests)
    assert all(turns[0] == Turn("system", "Be nice.") for turns in chat.requests)
    assert fixed.ignore_eos and not chat.ignore_eos
    assert [t[-1] for t in fixed.requests] == [t[-1] for t in chat.requests]  # same questions
    params = fixed.params
    assert params.greedy and params.repetition_penalty == 1.0 and params.max_new_tokens == 64


def test_an_unknown_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload 'long'"):
        workload("long", 1, 1, 8, "")


async def test_measure_keeps_to_the_concurrency_and_records_failures() -> None:
    in_flight, most = 0, 0

    async def stream(load: Workload, turns: tuple[Turn, ...]) -> AsyncIterator[Piece]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if "France" in turns[-1].content:
            raise RuntimeError("server said no")
        yield Piece("Hello")
        yield Piece(" there", tokens=2)

    load = workload("chat", 12, 4, 8, "")
    result = await measure(stream, load)
    assert most == 4
    assert len(result.served) == 11 and result.errors == ["RuntimeError: server said no"]
    assert all(s.text == "Hello there" and s.reported == 2 for s in result.served)
    assert all(0 <= s.ttft <= s.seconds <= result.wall_s for s in result.served)


def test_fixed_rows_count_the_tokens_asked_and_flag_other_server_counts() -> None:
    load = workload("fixed", 3, 1, 64, "")
    served = [Served(0.1, 1.1, "a b", 64), Served(0.1, 0.9, "", 63), Served(0.2, 1.2, "x")]
    summary = summarize(load, Measured(served, wall_s=3.2), lambda text: 1000)
    assert summary.tokens == 192 and summary.total == pytest.approx(60.0)
    assert summary.mismatches == 1
    assert summary.ttft50 == pytest.approx(0.1) and summary.ttft95 == pytest.approx(0.2)
    assert summary.decode == pytest.approx(63 / 0.8)  # the best lone reply, after its first


def test_chat_replies_are_counted_by_the_tokenizer() -> None:
    load = workload("chat", 2, 2, 64, "")
    served = [Served(0.1, 1.0, "one two three", 99), Served(0.1, 1.0, "four", None)]
    summary = summarize(load, Measured(served, wall_s=2.0), lambda text: len(text.split()))
    assert summary.tokens == 4 and summary.total == 2.0 and summary.mismatches == 0
    assert math.isnan(summary.decode)


def test_several_runs_give_each_figures_median() -> None:
    runs = [
        Summary(10, 1.0, 0.1, 0.5, 0),
        Summary(30, 3.0, 0.3, 0.2, 2),
        Summary(20, 2.0, 0.2, 9, 0),
    ]
    median = median_summary(runs)
    assert (median.tokens, median.total, median.ttft50, median.ttft95) == (20, 2.0, 0.2, 0.5)
    assert median.mismatches == 2
    with pytest.raises(ValueError, match="no runs"):
        median_summary([])
