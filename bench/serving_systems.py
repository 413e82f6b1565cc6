"""The systems ``bench/serving.py`` compares, each as a :data:`~bench.serving_workloads.StreamFn`.

- selftune's local engines (torch, llama.cpp) and its OpenAI backend, through the product's
  Generator contract (``stream(turns, params)``);
- an OpenAI-compatible server driven directly over HTTP (llama-server, vLLM): the anchors, with
  ``ignore_eos`` for the fixed-length rows and the server's own token count.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from bench.serving_workloads import Piece, StreamFn, Workload
from bot.generation import Generator
from bot.types import Turn, messages


def generator_stream(gen: Generator) -> StreamFn:
    """A Generator (the engine or the OpenAI backend) as a system: its text pieces."""

    async def stream(load: Workload, turns: tuple[Turn, ...]) -> AsyncIterator[Piece]:
        async for text in gen.stream(list(turns), load.params):
            yield Piece(text)

    return stream


def engine_stream(gen: Any) -> StreamFn:
    """The local engine (a TransformersGenerator) as a system. For the fixed-length rows its
    stop ids are emptied (the Generator contract has no "ignore the end of turn"): every row
    then runs exactly ``max_new_tokens`` steps, as ``ignore_eos`` makes the servers do."""
    engine = gen._engine
    stops = engine._stop_ids
    inner = generator_stream(gen)

    async def stream(load: Workload, turns: tuple[Turn, ...]) -> AsyncIterator[Piece]:
        engine._stop_ids = frozenset() if load.ignore_eos else stops  # read on the engine thread
        async for piece in inner(load, turns):
            yield piece

    return stream


def llama_engine_stream(gen: Any) -> StreamFn:
    """The llama.cpp engine (a LlamaCppGenerator) as a system, with the fixed-length rows run
    exactly as :func:`engine_stream` runs them (its stop ids emptied for them)."""
    text = gen._text
    stops = text.stop_ids
    inner = generator_stream(gen)

    async def stream(load: Workload, turns: tuple[Turn, ...]) -> AsyncIterator[Piece]:
        text.stop_ids = frozenset() if load.ignore_eos else stops  # read on the engine thread
        async for piece in inner(load, turns):
            yield piece

    return stream


def request_body(model: str, load: Workload, turns: tuple[Turn, ...]) -> dict[str, Any]:
    """A greedy streaming chat completion; the fixed rows ignore the end of turn."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages(list(turns)),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": load.params.max_new_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    if load.ignore_eos:
        body["ignore_eos"] = True  # vLLM and llama-server both take it
    return body


def http_stream(client: httpx.AsyncClient, model: str) -> StreamFn:
    """An OpenAI-compatible server at ``client``'s base URL, driven directly."""

    async def stream(load: Workload, turns: tuple[Turn, ...]) -> AsyncIterator[Piece]:
        body = request_body(model, load, turns)
        async with client.stream("POST", "chat/completions", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            async for line in response.aiter_lines():
                piece = parse_event(line)
                if piece is None:
                    return
                yield piece

    return stream


def parse_event(line: str) -> Piece | None:
    """One server-sent event line as a Piece (empty for blank lines and comments), or None at
    ``data: [DONE]``. The token count comes from ``usage`` (or llama-server's ``timings``)."""
    if not line.startswith("data:"):
        return Piece()
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    event = json.loads(data)
    text = "".join(
        (choice.get("delta") or {}).get("content") or "" for choice in event.get("choices") or []
    )
    usage = event.get("usage") or {}
    tokens = usage.get("completion_tokens")
    if tokens is None:
        tokens = (event.get("timings") or {}).get("predicted_n")
    return Piece(text, int(tokens) if tokens is not None else None)
