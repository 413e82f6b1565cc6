"""The optional self-supervised term: next-token loss on what users wrote in unrated exchanges.

Pre-training's objective on the community's own text keeps the adapter fluent in how its users
talk. Only the user's newest message of each exchange carries labels: the bot's unrated replies
are not learned (they may be bad), and earlier turns are learned in their own exchanges, so no
message counts twice. Off unless ``training.lm_weight > 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bot.generation.template import chat_ids
from bot.trainer.examples import IGNORE, Example
from bot.trainer.loop import Runtime, batches, micro_batches, token_nll


def build_lm_examples(
    tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int
) -> list[Example]:
    """Each row's prompt rendered whole; labels on its last (user) turn only."""
    examples = []
    for row in rows:
        prompt = [{"role": m["role"], "content": m["content"]} for m in row.get("prompt", [])]
        if len(prompt) < 2 or prompt[-1]["role"] != "user":
            continue
        context = chat_ids(tokenizer, prompt[:-1], add_generation_prompt=False)
        full = chat_ids(tokenizer, prompt, add_generation_prompt=False)
        message = len(full) - len(context)  # tokens of the last turn: the labels
        if full[: len(context)] != context or message >= max_length:
            continue  # a template that does not extend its prefix, or a message too long
        full = full[-max_length:]  # the context is cut from the left, the message never
        start = len(full) - message
        labels = [IGNORE] * start + full[start:]
        examples.append(Example(full, labels, row.get("exchange_id"), prompt_len=start))
    return examples


def lm_term(
    model: Any, examples: Sequence[Example], weight: float, batch_size: int, seed: int, rt: Runtime
) -> Callable[[], dict[str, float]]:
    """A callable adding ``weight`` × mean token NLL of the next batch of ``examples`` to the
    gradient (cycling through them for as many steps as training takes)."""
    stream = batches(examples, batch_size, 10**9, seed)

    def term() -> dict[str, float]:
        batch = next(stream)
        count = sum(1 for ex in batch for label in ex.labels[1:] if label != IGNORE)
        total = 0.0
        for group in micro_batches(batch):
            nll, _ = token_nll(model, group, rt)
            loss = weight * nll.sum() / max(count, 1)
            loss.backward()  # type: ignore[no-untyped-call]
            total += float(loss.item()) / weight
        return {"lm_loss": total}

    return term
