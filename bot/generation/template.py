"""What both local engines (``bot.engine``, torch, and ``bot.ggml``, llama.cpp) and the trainer
take from a model's tokenizer the same way: chat-template token ids and the ids that end a
reply. The tokenizer is passed in (a transformers tokenizer): nothing heavy is imported here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EosIds = int | Sequence[int] | None  # a config's ``eos_token_id``: one id, several, or none


def chat_ids(
    tokenizer: Any, chat: Sequence[Mapping[str, str]], *, add_generation_prompt: bool
) -> list[int]:
    """Token ids of ``chat`` rendered by the tokenizer's own chat template."""
    ids = tokenizer.apply_chat_template(
        [dict(m) for m in chat],
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=False,
    )
    if isinstance(ids, Mapping):  # some tokenizers return a BatchEncoding regardless
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def stop_ids(tokenizer: Any, eos: EosIds) -> frozenset[int]:
    """End-of-sequence ids: the generation config's ``eos``, the tokenizer's, and ChatML's
    end of turn."""
    ids: set[int] = {eos} if isinstance(eos, int) else set(eos or ())
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return frozenset(ids)
