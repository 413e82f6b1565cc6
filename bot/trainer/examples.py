"""Inputs of a training run: rated exchanges turned into tokenized examples (the spec is in
bot.learning.protocol).

A dataset row (TRL's conversational KTO format) is ``{"prompt": [messages], "completion":
[assistant message], "label": bool, "exchange_id": int}``. An example renders prompt and
completion with the model's own chat template; its labels are the reply tokens up to and
including the end-of-turn token, and IGNORE everywhere in the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import TrainingError
from bot.generation.template import chat_ids

IGNORE = -100  # label of tokens that carry no loss (the prompt, padding)
NO_LIKED = "no liked exchanges to learn from"


@dataclass(frozen=True)
class Example:
    """One tokenized training example: labels are IGNORE except on the reply."""

    input_ids: list[int]
    labels: list[int]
    exchange_id: int | None = None
    label: bool = True  # 👍 (desirable) or 👎 (undesirable)
    prompt_len: int = 0  # tokens before the reply: input_ids[prompt_len:] is the reply

    @property
    def reply_ids(self) -> list[int]:
        return self.input_ids[self.prompt_len :]


@dataclass(frozen=True)
class Dropped:
    """A dataset row the trainer could not use, and the reason."""

    exchange_id: int | None
    reason: str


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL dataset of KTO-style rows (prompt, completion, label, exchange_id)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"cannot read the dataset {path}: {exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError as exc:
            raise TrainingError(f"{path} line {number} is not JSON: {exc}") from None
        if row is not None:
            rows.append(row)
    return rows


def build_examples(
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    max_length: int,
    *,
    liked_only: bool = True,
    split: str = "train",
) -> tuple[list[Example], list[Dropped]]:
    """Tokenize the rows of ``split`` (rows without one are training rows), only the liked
    ones if ``liked_only``; report those that cannot become an example, and why."""
    end_id = end_of_turn_id(tokenizer)
    examples: list[Example] = []
    dropped: list[Dropped] = []
    for row in rows:
        if row.get("split", "train") != split or (liked_only and row.get("label") is not True):
            continue
        try:
            examples.append(build_example(tokenizer, row, max_length, end_id))
        except Unfit as exc:
            dropped.append(Dropped(row.get("exchange_id"), str(exc)))
    return examples, dropped


class Unfit(ValueError):
    """This one row cannot be used (others may)."""


def build_example(
    tokenizer: Any, row: Mapping[str, Any], max_length: int, end_id: int | None
) -> Example:
    """Render prompt + reply with the chat template; labels cover the reply and its end of turn.

    Too long: drop the oldest turns (keeping the system prompt and the last turn), then cut
    prompt tokens from the left. The reply is never cut; a reply that does not fit is Unfit.
    """
    try:
        prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
        completion = [{"role": m["role"], "content": m["content"]} for m in row["completion"]]
    except (KeyError, TypeError):
        raise Unfit("malformed row: needs prompt and completion message lists") from None
    prompt_ids, reply_ids = _render(tokenizer, prompt, completion, end_id)
    while len(prompt_ids) + len(reply_ids) > max_length and _drop_oldest_turn(prompt):
        prompt_ids, reply_ids = _render(tokenizer, prompt, completion, end_id)
    if len(reply_ids) >= max_length:
        raise Unfit(f"reply longer than max_length ({len(reply_ids)} ≥ {max_length} tokens)")
    overflow = len(prompt_ids) + len(reply_ids) - max_length
    if overflow > 0:
        prompt_ids = prompt_ids[overflow:]  # cut from the left: the latest context matters most
    if not reply_ids:  # never an example without labels: it would teach nothing
        raise Unfit("the reply renders to no tokens")
    labels = [IGNORE] * len(prompt_ids) + reply_ids
    return Example(
        prompt_ids + reply_ids,
        labels,
        row.get("exchange_id"),
        label=row.get("label") is True,
        prompt_len=len(prompt_ids),
    )


def _render(
    tokenizer: Any,
    prompt: list[dict[str, str]],
    completion: list[dict[str, str]],
    end_id: int | None,
) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with the assistant header) and of the reply that follows it."""
    prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = chat_ids(tokenizer, prompt + completion, add_generation_prompt=False)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise TrainingError(
            "the chat template does not render the prompt as a prefix of the whole conversation, "
            "so the prompt cannot be masked out of the loss"
        )
    reply = full_ids[len(prompt_ids) :]
    # Learn up to and including the end-of-turn token (generation stops there), not the
    # newline some templates put after it.
    if end_id is not None and end_id in reply:
        reply = reply[: len(reply) - reply[::-1].index(end_id)]
    return prompt_ids, reply


def _drop_oldest_turn(prompt: list[dict[str, str]]) -> bool:
    """Remove the oldest non-system turn (and an assistant turn left leading); False if none."""
    turns = [i for i, m in enumerate(prompt) if m["role"] != "system"]
    if len(turns) <= 1:
        return False
    del prompt[turns[0]]
    rest = [i for i, m in enumerate(prompt) if m["role"] != "system"]
    if len(rest) > 1 and prompt[rest[0]]["role"] == "assistant":
        del prompt[rest[0]]
    return True


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token that ends an assistant turn: ChatML's ``<|im_end|>`` when the tokenizer knows it,
    else EOS."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        return im_end
    eos = tokenizer.eos_token_id
    return int(eos) if eos is not None else None
