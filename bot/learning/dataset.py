"""Rated exchanges as training rows: TRL's conversational KTO format, one row per rating
(``selftune export``); preference pairs in TRL's preference format, one row per pair
(``selftune export --pairs``); and the JSONL writer of every dataset (a run's rows are
bot.learning.curation.Row and bot.learning.pair_curation.PairRow)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from bot.types import RatedExchange, messages
from storage.pairs import PreferencePair


def kto_row(rated: RatedExchange, *, with_meta: bool = False) -> dict[str, Any]:
    """``{"prompt": [messages], "completion": [assistant message], "label": bool}``.

    The prompt is the exact context the model saw when it wrote the reply (system prompt and
    history included), so the row trains the model on the situation it was actually in.
    ``with_meta`` adds where the row came from: the exchange, the rater, the adapter version
    that wrote the reply (None: the base model) and when it was rated.
    """
    row: dict[str, Any] = {
        "prompt": messages(rated.prompt),
        "completion": [{"role": "assistant", "content": rated.completion}],
        "label": rated.label,
    }
    if with_meta:
        row |= {
            "exchange_id": rated.exchange_id,
            "user_key": rated.user_key,
            "adapter_version": rated.adapter_version,
            "rated_at": rated.rated_at.isoformat(),
        }
    return row


def kto_rows(
    rated: Iterable[RatedExchange], *, with_meta: bool = False
) -> Iterator[dict[str, Any]]:
    """:func:`kto_row` of each rated exchange."""
    for item in rated:
        yield kto_row(item, with_meta=with_meta)


def pair_row(pair: PreferencePair, *, with_meta: bool = False) -> dict[str, Any]:
    """``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant
    message]}``: the exact context both replies answered, the one the user preferred and the
    other. ``with_meta`` adds the exchanges, the user, the adapter versions that wrote each
    side (None: the base model; a correction carries the version it corrected) and when."""
    row: dict[str, Any] = {
        "prompt": messages(pair.prompt),
        "chosen": [{"role": "assistant", "content": pair.chosen.completion}],
        "rejected": [{"role": "assistant", "content": pair.rejected.completion}],
    }
    if with_meta:
        row |= {
            "chosen_exchange_id": pair.chosen.exchange_id,
            "rejected_exchange_id": pair.rejected.exchange_id,
            "chosen_adapter_version": pair.chosen.adapter_version,
            "rejected_adapter_version": pair.rejected.adapter_version,
            "correction": pair.chosen.corrected_by is not None,
            "user_key": pair.user_key,
            "rated_at": pair.rated_at.isoformat(),
        }
    return row


def pair_rows(
    pairs: Iterable[PreferencePair], *, with_meta: bool = False
) -> Iterator[dict[str, Any]]:
    """:func:`pair_row` of each pair."""
    for pair in pairs:
        yield pair_row(pair, with_meta=with_meta)


def write_jsonl(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write ``rows`` to ``out`` one JSON object a line; return how many were written."""
    count = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def write_jsonl_file(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write ``rows`` as JSONL to ``path`` (its folder created); return how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        return write_jsonl(rows, out)
