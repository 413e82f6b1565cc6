"""The thread tuner of the llama.cpp engine: each count measured, the faster used, the slower
tried again now and then, and a change of load followed."""

from __future__ import annotations

import pytest

from bot.ggml.threads import RECENT, SIZES, ThreadTuner, step_size, thread_choices


def run(tuner: ThreadTuner, seconds: dict[int, float], steps: int, tokens: int = 1) -> list[int]:
    """``steps`` steps of ``tokens`` tokens, each count taking ``seconds[count]``; the counts
    the tuner picked."""
    picked = []
    for _ in range(steps):
        threads = tuner.pick(tokens)
        tuner.record(tokens, threads, seconds[threads])
        picked.append(threads)
    return picked


def test_a_set_count_is_always_used() -> None:
    tuner = ThreadTuner((3,))
    assert run(tuner, {3: 1.0}, 50) == [3] * 50


def test_each_count_is_measured_then_the_faster_is_used() -> None:
    tuner = ThreadTuner((1, 2), explore=16)
    picked = run(tuner, {1: 0.010, 2: 0.006}, 66)
    assert picked[:2] == [1, 2]  # each once first
    # the slower one is tried after 16 steps, then twice as seldom each time it loses
    assert [i for i, threads in enumerate(picked) if threads == 1] == [0, 16, 49]


def test_a_steady_load_costs_few_tries() -> None:
    tuner = ThreadTuner((1, 2), explore=16)
    picked = run(tuner, {1: 0.011, 2: 0.030}, 1000)
    assert picked.count(2) <= 8  # 16, 32, ..., 256 steps apart
    assert picked[-100:].count(2) <= 1


def test_an_unlucky_step_under_load_changes_nothing() -> None:
    """On 1 thread under load, one stalled step is no reason to move to 2 threads."""
    tuner = ThreadTuner((1, 2), explore=16)
    run(tuner, {1: 0.011, 2: 0.030}, 600)
    tuner.record(1, tuner.pick(1), 0.060)  # one stalled 1-thread step
    after = run(tuner, {1: 0.011, 2: 0.030}, 200)
    assert after.count(2) <= 1  # a try, 256 steps after the last


def test_a_change_of_load_is_followed() -> None:
    """2 threads win while the machine is idle; once another process takes a core, 1 thread
    is faster (the measured case) and the tuner moves to it, and back when the load is gone."""
    tuner = ThreadTuner((1, 2), explore=16)
    run(tuner, {1: 0.011, 2: 0.007}, 40)
    busy = run(tuner, {1: 0.012, 2: 0.030}, 40)
    assert busy[4:].count(1) >= 35  # it moves once 4 steps in a row were slow
    idle = run(tuner, {1: 0.011, 2: 0.007}, 200)
    assert idle[-100:].count(2) >= 99  # back at the next try, and there it stays


def test_step_sizes_are_told_apart() -> None:
    """16 rows cost more than 1: a count is compared with itself on steps of the same size."""
    tuner = ThreadTuner((1, 2), explore=1000)
    for _ in range(5):
        for tokens, seconds in ((1, {1: 0.010, 2: 0.007}), (16, {1: 0.030, 2: 0.045})):
            threads = tuner.pick(tokens)
            tuner.record(tokens, threads, seconds[threads])
    assert tuner.pick(1) == 2 and tuner.pick(16) == 1


def test_step_size_buckets() -> None:
    assert [step_size(n) for n in (1, 2, SIZES)] == [1, 2, SIZES]
    assert step_size(SIZES + 1) == step_size(32) != step_size(33)
    assert step_size(512) == step_size(300)


@pytest.mark.parametrize(
    ("configured", "cores", "expected"),
    [(None, 2, (1, 2)), (None, 1, (1,)), (None, 16, (15, 16)), (2, 16, (2,)), (1, 2, (1,))],
)
def test_choices(configured: int | None, cores: int, expected: tuple[int, ...]) -> None:
    assert thread_choices(configured, cores) == expected


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ThreadTuner(())
    with pytest.raises(ValueError, match="at least 2"):
        ThreadTuner((1, 2), explore=1)


def test_three_counts_take_turns_being_tried() -> None:
    tuner = ThreadTuner((1, 2, 4), explore=4)
    picked = run(tuner, {1: 0.020, 2: 0.010, 4: 0.015}, 40)
    assert picked[:3] == [1, 2, 4]
    assert {1, 4} <= set(picked[3:]) and picked[3:].count(2) > 30


def test_one_unlucky_step_costs_nothing() -> None:
    """A stall of the faster count (the OS took a core for a moment) does not make the tuner
    switch; a load that stays does, within RECENT steps, and it tries the faster count again
    soon, however long the gap between tries had grown."""
    tuner = ThreadTuner((1, 2), explore=16)
    run(tuner, {1: 0.011, 2: 0.007}, 600)  # tries of 1 thread lost: the gap grew to 256
    tuner.record(1, tuner.pick(1), 0.040)  # one stalled 2-thread step
    assert run(tuner, {1: 0.011, 2: 0.007}, 40) == [2] * 40
    stalled = run(tuner, {1: 0.011, 2: 0.040}, 8)  # a few stalls in a row
    assert stalled[:RECENT] == [2] * RECENT and stalled[RECENT:] == [1] * (8 - RECENT)
    after = run(tuner, {1: 0.011, 2: 0.007}, 40)
    assert after.index(2) <= 16  # tried again within explore steps, not 256
    assert after[-20:].count(2) >= 19


def test_a_stalled_try_does_not_hide_a_change_of_load() -> None:
    """A try of 1 thread that stalled leaves a bad figure for it; when the load then slows the
    2 threads in use, 1 thread is tried again at once instead of 256 steps later."""
    tuner = ThreadTuner((1, 2), explore=16)
    run(tuner, {1: 0.011, 2: 0.007}, 600)
    while (threads := tuner.pick(1)) != 1:  # up to the next try of 1 thread, which stalls
        tuner.record(1, threads, 0.007)
    tuner.record(1, 1, 0.060)
    busy = run(tuner, {1: 0.011, 2: 0.030}, 30)
    assert busy[: RECENT + 1] == [2] * RECENT + [1]  # RECENT slow steps, then the try
    assert busy[RECENT:].count(1) >= 30 - RECENT - 1  # and a try of 2 threads 16 steps on


def test_prompt_chunks_of_one_bucket_compare_per_token() -> None:
    """300 and 500 tokens fall in one bucket: their times are compared per token."""
    tuner = ThreadTuner((1, 2), explore=16)
    assert step_size(300) == step_size(500)
    tuner.record(300, tuner.pick(300), 0.48)  # 1 thread: 1.6 ms a token
    tuner.record(500, tuner.pick(500), 0.50)  # 2 threads: 1.0 ms a token, more in all
    assert tuner.pick(400) == 2
