"""A run's tokenized inputs: training examples (👍 only for SFT), the held-out slice, and the
unrated text of the optional self-supervised term; with the rows dropped, and why."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bot.errors import TrainingError
from bot.learning.protocol import TrainingSpec
from bot.trainer.examples import NO_LIKED, Dropped, Example, build_examples, load_rows
from bot.trainer.lm import build_lm_examples
from bot.trainer.pairs import PairItem, build_pairs

log = logging.getLogger("bot.trainer")


@dataclass
class Prepared:
    """The tokenized inputs of a run."""

    train: list[Example]
    heldout: list[Example]
    lm: list[Example]
    dropped: list[Dropped]
    pairs: list[PairItem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        liked = sum(1 for ex in self.train if ex.label)
        held = sum(1 for ex in self.heldout if ex.label)
        return {
            "liked": liked,
            "disliked": len(self.train) - liked,
            "heldout_liked": held,
            "heldout_disliked": len(self.heldout) - held,
            "lm_examples": len(self.lm),
        }


def prepare(tokenizer: Any, spec: TrainingSpec) -> Prepared:
    """Tokenize the training rows (liked only for SFT), the held-out rows, the unrated text."""
    rows = load_rows(spec.dataset)
    length = spec.training.max_length
    train_set, dropped = build_examples(tokenizer, rows, length, liked_only=spec.method == "sft")
    heldout, dropped_heldout = build_examples(
        tokenizer, rows, length, liked_only=False, split="heldout"
    )
    lm: list[Example] = []
    if spec.lm_dataset is not None and spec.training.lm_weight > 0:
        lm = build_lm_examples(tokenizer, load_rows(spec.lm_dataset), length)
    pairs: list[PairItem] = []
    if spec.pairs_dataset is not None and spec.training.pair_weight > 0:
        pairs, dropped_pairs = build_pairs(tokenizer, load_rows(spec.pairs_dataset), length)
        dropped_heldout = dropped_heldout + dropped_pairs
    for item in dropped + dropped_heldout:
        log.warning("skipping exchange %s: %s", item.exchange_id, item.reason)
    if not train_set:
        raise TrainingError(
            f"none of the {len(dropped)} rated exchanges fits in max_length={length} tokens"
            if dropped
            else NO_LIKED
        )
    return Prepared(train_set, heldout, lm, dropped + dropped_heldout, pairs)


DROPPED_REASONS = 20  # the most distinct reasons the ``done`` event lists (the rest: "other")
DROPPED_SAMPLE = 20  # dropped rows named in the event, as examples


def dropped_summary(dropped: list[Dropped]) -> dict[str, Any]:
    """How many rows were dropped, per reason, and a few of them: bounded, because it travels
    in one line of the trainer's ``done`` event however many rows were dropped."""
    reasons = Counter(d.reason for d in dropped).most_common()
    counts = dict(reasons[:DROPPED_REASONS])
    rest = sum(n for _, n in reasons[DROPPED_REASONS:])
    if rest:
        counts["other reasons"] = rest
    return {
        "dropped": counts,
        "dropped_total": len(dropped),
        "dropped_sample": [
            {"exchange_id": d.exchange_id, "reason": d.reason} for d in dropped[:DROPPED_SAMPLE]
        ],
    }


def data_report(spec: TrainingSpec, data: Prepared) -> dict[str, Any]:
    """The run's data figures for its report: method, example counts and drops by reason."""
    return {
        "method": spec.method,
        **data.counts(),
        "pairs": len(data.pairs),
        **dropped_summary(data.dropped),
    }
