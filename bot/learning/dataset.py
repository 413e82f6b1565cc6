"""Rated exchanges as training rows: TRL's conversational KTO format, one row per rating
(``selftune export``), and the JSONL writer of every dataset (a run's rows are
bot.learning.curation.Row)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from bot.types import RatedExchange, messages


def kto_row(rated: RatedExchange) -> dict[str, Any]:
    """``{"prompt": [messages], "completion": [assistant message], "label": bool}``.

    The prompt is the exact context the model saw when it wrote the reply (system prompt and
    history included), so the row trains the model on the situation it was actually in.
    """
    return {
        "prompt": messages(rated.prompt),
        "completion": [{"role": "assistant", "content": rated.completion}],
        "label": rated.label,
    }


def kto_rows(rated: Iterable[RatedExchange]) -> Iterator[dict[str, Any]]:
    """One KTO row per rated exchange, lazily."""
    for item in rated:
        yield kto_row(item)


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
