"""The OpenAI chat-completions wire format: request bodies, server-sent events, error texts.

Plain functions over httpx responses, shared by :mod:`bot.openai_backend`; vLLM's and
llama.cpp's dialects included (their extra sampling keys, their error shapes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from bot.config import BackendSettings
from bot.generation import GenerationError
from bot.types import GenerationParams, Turn


def messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in turns]


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
        if isinstance(event, dict) and event.get("error"):
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise GenerationError(f"the model server failed: {message}")
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                yield piece
