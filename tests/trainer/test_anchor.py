"""The anchor's KL on hand-made distributions: exact, and with free tokens (the end of turn) the
part about them is left out (KL = KL of a free token or not + P(none) · KL given none); the
tokens the ratings dispute, and what each ``training.anchor_free`` frees."""

from __future__ import annotations

import pytest
import torch

from bot.settings import TrainingSettings
from bot.trainer.anchor import anchor_kl, disputed_tokens, top_k
from bot.trainer.examples import IGNORE, Example
from bot.trainer.loop import Forward
from bot.trainer.run import anchor_free

END = 0
FREE = torch.tensor([END])
VOCAB = 8  # below the anchor's top-K: every token is kept


def _forward(probs: torch.Tensor) -> Forward:
    """A pass over one row whose labelled positions have the next-token ``probs``."""
    logp = probs.log()
    labelled = torch.ones(1, len(probs), dtype=torch.bool)
    return Forward(logp, labelled, torch.zeros(1, len(probs)))


def _probs(end: list[float], seed: int) -> torch.Tensor:
    """Per position: P(end) as given, the rest spread by a seeded draw."""
    rest = torch.rand(len(end), VOCAB - 1, generator=torch.Generator().manual_seed(seed)) + 0.1
    rest = rest / rest.sum(-1, keepdim=True) * (1 - torch.tensor(end)).unsqueeze(-1)
    return torch.cat([torch.tensor(end).unsqueeze(-1), rest], -1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p.log() - q.log())).sum())


def _bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return _kl(torch.stack([p, 1 - p], -1), torch.stack([q, 1 - q], -1))


def test_the_anchor_is_the_kl_from_the_base() -> None:
    base, moved = _probs([0.1, 0.3, 0.6], seed=0), _probs([0.2, 0.1, 0.5], seed=1)
    refs = top_k(_forward(base))
    assert float(anchor_kl(_forward(base), refs)) == pytest.approx(0.0, abs=1e-6)
    assert float(anchor_kl(_forward(moved), refs)) == pytest.approx(_kl(base, moved), rel=1e-5)


def test_a_free_end_leaves_where_a_reply_stops_to_the_ratings() -> None:
    base = _probs([0.1, 0.3, 0.6], seed=0)
    refs = top_k(_forward(base), FREE)
    # Only how likely it is to stop changes: free of cost with a free end, not without.
    stops_sooner = _probs([0.5, 0.7, 0.9], seed=0)
    assert float(anchor_kl(_forward(stops_sooner), refs, FREE)) == pytest.approx(0.0, abs=1e-6)
    assert float(anchor_kl(_forward(stops_sooner), top_k(_forward(base)))) > 0.1
    # What it says changes too: the whole KL less the part about stopping.
    moved = _probs([0.5, 0.7, 0.9], seed=1)
    expected = _kl(base, moved) - _bernoulli_kl(base[:, END], moved[:, END])
    assert float(anchor_kl(_forward(moved), refs, FREE)) == pytest.approx(expected, rel=1e-4)


def test_free_tokens_outside_the_bases_top_k_are_left_free_too() -> None:
    base = torch.randn(3, 100, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    free = base[0].argsort()[:2]  # two of the least likely tokens: outside every top 32
    logits = base.clone()
    logits[:, free] += 6.0  # the adapter makes them far likelier; the rest keep proportions
    moved = logits.log_softmax(-1)
    labelled = torch.ones(1, 3, dtype=torch.bool)
    refs = top_k(Forward(base, labelled, torch.zeros(1, 3)), free)
    out = Forward(moved, labelled, torch.zeros(1, 3))
    assert float(anchor_kl(out, refs, free)) == pytest.approx(0.0, abs=1e-5)
    assert float(anchor_kl(out, top_k(Forward(base, labelled, torch.zeros(1, 3))))) > 1e-3


def test_a_free_end_needs_the_bases_end_probabilities() -> None:
    base = _probs([0.1], seed=0)
    with pytest.raises(ValueError, match="top_k"):
        anchor_kl(_forward(base), top_k(_forward(base)), FREE)


def test_a_free_end_stays_finite_where_the_base_is_sure_to_stop() -> None:
    sure = torch.zeros(1, VOCAB)
    sure[0, END] = 40.0  # P(end) rounds to 1 in float32; log-softmax keeps the rest finite
    base = Forward(sure.log_softmax(-1), torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1))
    logits = torch.zeros(1, VOCAB, requires_grad=True)
    moved = Forward(logits.log_softmax(-1), base.labelled, base.nll)
    kl = anchor_kl(moved, top_k(base, FREE), FREE)
    kl.backward()  # type: ignore[no-untyped-call]
    assert torch.isfinite(kl) and logits.grad is not None and torch.isfinite(logits.grad).all()


def test_freed_tokens_may_trade_mass_among_themselves_and_with_the_rest() -> None:
    free = torch.tensor([0, 1])
    base = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.3, 0.3, 0.2, 0.2]])
    # The freed tokens take more mass (and split it otherwise); the rest keep their proportions.
    moved = torch.tensor([[0.35, 0.3, 0.15, 0.2], [0.05, 0.05, 0.45, 0.45]])
    refs = top_k(_forward(base), free)
    assert float(anchor_kl(_forward(moved), refs, free)) == pytest.approx(0.0, abs=1e-6)
    assert float(anchor_kl(_forward(moved), top_k(_forward(base)))) > 0.1


def _example(reply: list[int], liked: bool) -> Example:
    prompt = [7, 7]
    return Example(prompt + reply, [IGNORE] * len(prompt) + reply, label=liked, prompt_len=2)


def _rated(liked: int, disliked: int) -> list[Example]:
    """👍 replies use token 5 (a list's dash) and 👎 ones token 6 (the first person); 9 is
    common to both, 3 ends each, 4 shows up once."""
    return (
        [_example([5, 9, 5, 9, 3], True) for _ in range(liked)]
        + [_example([6, 9, 9, 9, 3], False) for _ in range(disliked)]
        + [_example([4, 9, 3], False)]
    )


def test_the_disputed_tokens_are_those_the_ratings_use_at_different_rates() -> None:
    assert set(disputed_tokens(_rated(20, 60))) == {5, 6}
    assert disputed_tokens(_rated(20, 60), limit=1) in ([5], [6])
    assert disputed_tokens(_rated(1, 2)) == []  # a handful of ratings is no evidence
    assert disputed_tokens(_rated(0, 60)) == []  # nothing liked to compare with


def test_each_anchor_setting_frees_its_tokens() -> None:
    rows = _rated(20, 60)
    rated = TrainingSettings()  # the default
    assert rated.anchor_free == "rated"
    held = rated.model_copy(update={"anchor_free": "nothing"})
    assert anchor_free(held, rows, END) == []  # the anchor holds everything
    assert anchor_free(rated.model_copy(update={"anchor_free": "end"}), rows, END) == [END]
    assert anchor_free(rated, rows, END)[0] == END
    assert set(anchor_free(rated, rows, END)) == {END, 5, 6}
    assert set(anchor_free(rated, rows, None)) == {5, 6}  # a template without an end of turn
    off = rated.model_copy(update={"anchor_weight": 0.0})
    assert anchor_free(off, rows, END) == []  # no anchor, nothing to free


def _fit_to_stopping(free: torch.Tensor | None) -> torch.Tensor:
    """Next-token probabilities that minimise -log P(end) + 5 · anchor, from the base's."""
    base = _probs([0.1], seed=0)
    refs = top_k(_forward(base), free)
    logits = base.log().clone().requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        moved = _forward(logits.softmax(-1))
        loss = -moved.logp[0, END] + 5 * anchor_kl(moved, refs, free)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return logits.detach().softmax(-1)[0]


def test_held_the_anchor_resists_what_the_ratings_ask_free_it_lets_it_go() -> None:
    held, free = _fit_to_stopping(None), _fit_to_stopping(FREE)
    assert held[END] < 0.5 < 0.9 < free[END]
    base = _probs([0.1], seed=0)[0]
    rest = free[1:] / free[1:].sum()  # what it would say if it went on: as the base would
    assert torch.allclose(rest, base[1:] / base[1:].sum(), atol=1e-3)
