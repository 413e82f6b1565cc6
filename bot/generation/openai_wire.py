"""The OpenAI chat-completions wire format: request bodies, server-sent events, error texts.

Plain functions over httpx responses, shared by :mod:`bot.generation.openai_api`; vLLM's and
llama.cpp's dialects included (their extra sampling keys, their error shapes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from bot.errors import GenerationError
from bot.settings import BackendSettings
from bot.types import GenerationParams, Turn, messages


def server_message(response: httpx.Response) -> str:
    """The error text of a failed answer: OpenAI's {"error": {"message"}}, vLLM's, or raw."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:300]
    return str(error)[:300]


def request_body(
    settings: BackendSettings, turns: Sequence[Turn], params: GenerationParams, model: str
) -> dict[str, Any]:
    """A streaming chat completion request with the request's own sampling parameters."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages(turns),
        "stream": True,
        "max_tokens": params.max_new_tokens,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if settings.sampling_extras:
        if params.top_k > 0 and not params.greedy:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
    return body


async def sse_pieces(response: httpx.Response) -> AsyncIterator[str]:
    """The text deltas of an OpenAI chat completion event stream, until ``data: [DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise GenerationError("the model server sent a malformed event") from None
        if not isinstance(event, dict):
            raise GenerationError(_malformed("is not a JSON object"))
        if event.get("error"):
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise GenerationError(f"the model server failed: {message}")
        for piece in _event_text(event):
            yield piece


def _event_text(event: dict[str, Any]) -> list[str]:
    """The text pieces of one chunk event: ``choices[].delta.content``, each part checked."""
    choices = event.get("choices") or []
    if not isinstance(choices, list):
        raise GenerationError(_malformed("has choices that are not a list"))
    pieces = []
    for choice in choices:
        if not isinstance(choice, dict):
            raise GenerationError(_malformed("has a choice that is not an object"))
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise GenerationError(_malformed("has a delta that is not an object"))
        piece = delta.get("content")
        if piece is not None and not isinstance(piece, str):
            raise GenerationError(_malformed("has content that is not text"))
        if piece:
            pieces.append(piece)
    return pieces


def _malformed(problem: str) -> str:
    return f"the model server sent a malformed event: it {problem}"
