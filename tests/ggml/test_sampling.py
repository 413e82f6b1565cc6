"""The numpy sampler against transformers' own processors (the torch engine's semantics)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bot.ggml.sampling import Sampler, penalize, top_k, top_p
from bot.types import GenerationParams

VOCAB = 500


def logits(seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 3.0, VOCAB).astype(np.float32)
    values[:5] = values[5]  # ties at the top-k boundary are kept, as transformers keeps them
    return values


@pytest.mark.parametrize("penalty", [1.1, 1.8])
def test_repetition_penalty_is_transformers(penalty: float) -> None:
    scores = logits(0)
    seen = [3, 7, 7, 42, 499, 0]
    ours = penalize(scores, seen, penalty)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(
        torch.tensor([seen]), torch.from_numpy(scores.copy())[None]
    )
    np.testing.assert_allclose(ours, theirs[0].numpy(), rtol=1e-6)
    assert not np.shares_memory(ours, scores)


@pytest.mark.parametrize(("k", "p", "temperature"), [(50, 0.9, 0.7), (5, 1.0, 1.3), (0, 0.5, 1.0)])
def test_candidates_are_what_transformers_keeps(k: int, p: float, temperature: float) -> None:
    for seed in range(5):
        scores = logits(seed)
        warped = torch.from_numpy(scores.copy())[None]
        dummy = torch.zeros((1, 1), dtype=torch.long)
        warped = TemperatureLogitsWarper(temperature)(dummy, warped)
        if k:
            warped = TopKLogitsWarper(k)(dummy, warped)
        if p < 1.0:
            warped = TopPLogitsWarper(p)(dummy, warped)
        expected = set(np.flatnonzero(np.isfinite(warped[0].numpy())).tolist())
        candidates = top_k(scores, k)
        values = scores[candidates].astype(np.float64) / temperature
        kept = candidates[top_p(values, p)] if p < 1.0 else candidates
        assert set(kept.tolist()) == expected


def test_greedy_is_the_argmax_and_never_copies_without_a_penalty() -> None:
    scores = logits(1)
    scores.flags.writeable = False  # llama.cpp's buffer: a view the sampler must not write
    sampler = Sampler(GenerationParams(temperature=0.0, repetition_penalty=1.0))
    assert sampler.sample(scores, [1, 2, 3]) == int(np.argmax(scores))


def test_seeded_draws_repeat_and_follow_the_distribution() -> None:
    params = GenerationParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=3)
    scores = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    draws = [Sampler(params).sample(scores, []) for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed, the same first draw
    sampler = Sampler(params)
    counts = np.bincount([sampler.sample(scores, []) for _ in range(4000)], minlength=3)
    np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.2], atol=0.03)
