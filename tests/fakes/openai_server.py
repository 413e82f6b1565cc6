"""A fake OpenAI-compatible server (vLLM's dialect) on 127.0.0.1 for tests and the bench.

It answers what selftune's OpenAI backend uses, in vLLM's wire format: ``GET /v1/models``,
streaming ``POST /v1/chat/completions`` (server-sent events ending in ``data: [DONE]``),
``POST /tokenize``, and runtime LoRA loading (``/v1/load_lora_adapter``,
``/v1/unload_lora_adapter``) with vLLM's error answers. A reply says which model (base or
LoRA name) wrote it and echoes the last message, one word per event, so tests can see which
adapter served a request. Every request is recorded; failures can be injected; with
``api_key`` every endpoint refuses a request without the bearer token, as vLLM's
``--api-key`` does; :meth:`FakeOpenAI.restart` forgets the run-time adapters, as a restarted
server would.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 2048


@dataclass
class Failure:
    """Answer the next chat completion with ``status`` and ``message`` (vLLM's error shape);
    or, with ``after_words``, send that many words and then an error event mid-stream."""

    status: int = 500
    message: str = "engine died"
    after_words: int | None = None


@dataclass
class FakeOpenAI:
    """``async with FakeOpenAI() as server:`` then point the backend at ``server.base_url``."""

    api_key: str | None = None
    delay_s: float = 0.0  # between two streamed words
    requests: list[dict[str, Any]] = field(default_factory=list)
    loras: dict[str, str] = field(default_factory=dict)  # name -> path, as loaded
    unloaded: list[str] = field(default_factory=list)
    fail_next: Failure | None = None
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def restart(self) -> None:
        """Forget the adapters loaded at run time, as vLLM does when it restarts."""
        self.loras.clear()

    @staticmethod
    def reply_for(model: str, messages: list[dict[str, str]]) -> str:
        """What the fake answers: the serving model's name and the last message."""
        return f"[{model}] {messages[-1]['content']}"

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Unauthorized")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        ids = [BASE_MODEL, *self.loras]
        data = [{"id": i, "object": "model", "max_model_len": MAX_MODEL_LEN} for i in ids]
        return web.json_response({"object": "list", "data": data})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        body = await request.json()
        self.requests.append({"path": "/tokenize", **body})
        words = sum(len(m["content"].split()) + 4 for m in body["messages"]) + 3
        return web.json_response(
            {"count": words, "max_model_len": MAX_MODEL_LEN, "tokens": list(range(words))}
        )

    async def _load(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        body = await request.json()
        self.requests.append({"path": "/v1/load_lora_adapter", **body})
        name, path = body["lora_name"], body["lora_path"]
        if name in self.loras:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        if not Path(path, "adapter_config.json").is_file():
            return _error(404, f"No adapter found for {path}")
        self.loras[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        body = await request.json()
        self.requests.append({"path": "/v1/unload_lora_adapter", **body})
        name = body["lora_name"]
        if self.loras.pop(name, None) is None:
            return _error(404, f"The lora adapter '{name}' cannot be found.")
        self.unloaded.append(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refused(request):
            return refused
        body = await request.json()
        self.requests.append({"path": "/v1/chat/completions", **body})
        model = body["model"]
        if model != BASE_MODEL and model not in self.loras:
            return _error(404, f"The model `{model}` does not exist.")
        failure, self.fail_next = self.fail_next, None
        if failure is not None and failure.after_words is None:
            return _error(failure.status, failure.message)
        words = self.reply_for(model, body["messages"]).split(" ")[: body["max_tokens"]]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(words):
            if failure is not None and i == failure.after_words:
                await _event(response, {"error": {"message": failure.message, "code": 500}})
                return response
            await asyncio.sleep(self.delay_s)
            delta = {"content": word if i == 0 else " " + word}
            await _event(response, _chunk(model, delta, None))
        await _event(response, _chunk(model, {}, "length"))
        await response.write(b"data: [DONE]\n\n")
        return response


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


def _error(status: int, message: str) -> web.Response:
    body = {"object": "error", "message": message, "type": "BadRequestError", "code": status}
    return web.json_response({"error": body} if status == 401 else body, status=status)
