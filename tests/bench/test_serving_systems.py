"""The serving bench's HTTP client of OpenAI-compatible servers (bench/serving_systems.py)."""

from __future__ import annotations

import json

import httpx

from bench.serving_systems import http_stream, parse_event, request_body
from bench.serving_workloads import Piece, measure, workload


def test_fixed_rows_ask_the_server_to_ignore_the_end_of_turn() -> None:
    fixed, chat = workload("fixed", 1, 1, 64, "S"), workload("chat", 1, 1, 64, "S")
    body = request_body("m", fixed, fixed.requests[0])
    assert body["ignore_eos"] is True and body["max_tokens"] == 64
    assert body["temperature"] == 0.0 and body["stream"] is True
    chat_body = request_body("m", chat, chat.requests[0])
    assert "ignore_eos" not in chat_body
    assert chat_body["messages"][0] == {"role": "system", "content": "S"}


def test_events_give_text_and_the_servers_token_count() -> None:
    delta = {"choices": [{"delta": {"content": "Hi"}}]}
    assert parse_event("data: " + json.dumps(delta)) == Piece("Hi")
    usage = {"choices": [], "usage": {"completion_tokens": 64}}
    assert parse_event("data: " + json.dumps(usage)) == Piece("", 64)
    timings = {"choices": [{"delta": {}}], "timings": {"predicted_n": 12}}
    assert parse_event("data: " + json.dumps(timings)) == Piece("", 12)
    assert parse_event(": ping") == Piece() and parse_event("") == Piece()
    assert parse_event("data: [DONE]") is None


async def test_a_server_is_driven_over_http() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["model"] == "smollm2" and body["ignore_eos"] is True
        events = [
            {"choices": [{"delta": {"content": "Hel"}}]},
            {"choices": [{"delta": {"content": "lo"}}]},
            {"choices": [], "usage": {"completion_tokens": 8}},
        ]
        lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
        return httpx.Response(200, text="".join(lines))

    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(base_url="http://server/v1", transport=transport) as client:
        result = await measure(http_stream(client, "smollm2"), workload("fixed", 3, 3, 8, ""))
    assert [(s.text, s.reported) for s in result.served] == [("Hello", 8)] * 3


async def test_a_server_error_is_reported_with_its_status() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(400, text="bad model"))
    async with httpx.AsyncClient(base_url="http://server/v1", transport=transport) as client:
        result = await measure(http_stream(client, "x"), workload("chat", 1, 1, 8, ""))
    assert result.served == [] and result.errors == ["RuntimeError: HTTP 400: bad model"]
