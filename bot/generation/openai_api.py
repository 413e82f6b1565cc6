"""A Generator on an OpenAI-compatible server (vLLM, llama.cpp's server): scale beyond one machine.

Replies stream from ``POST {base_url}/chat/completions`` (server-sent events) with each
request's sampling parameters; batching many chats is the server's job (vLLM batches
continuously). Adapter slots map to LoRA adapters loaded on the server at run time through
vLLM's ``/v1/load_lora_adapter`` (the server needs ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``): each adapter version gets its own name, and a
request names the adapter of its slot as its ``model`` (an empty slot: the base model).
Prompt tokens are counted by the local tokenizer of the same model, or the server's
``/tokenize``, so the chat still fits its context window by tokens.

No torch here: the local tokenizer comes from :mod:`bot.engine.tokenizer`, imported only when
``token_count = "local"``.

The api key never shows in an error or a log line: a transport error's text can quote the
request's headers (h11 quotes a header it refuses), so errors name the failure's kind and the
log gets its text with the key masked. A server that restarts forgets the adapters loaded at run
time; a request whose adapter the server no longer knows loads it again and is retried once.
Connections are not capped unless ``backend.max_connections`` says so (httpx's default of 100
would make the 101st concurrent chat wait, and fail as if the server were slow).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bot.errors import GenerationError, LoraError, ModelLoadError
from bot.generation import DEFAULT_SLOT
from bot.generation.openai_wire import request_body, server_message, sse_pieces
from bot.settings import BackendSettings, ModelSettings
from bot.types import GenerationParams, Turn, messages

log = logging.getLogger(__name__)

CountFn = Callable[[Sequence[Turn]], int]

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")


class OpenAIGenerator:
    """A :class:`bot.generation.Generator` whose replies come from an OpenAI-compatible server.

    Build it with :meth:`connect`; ``transport`` lets tests route the client anywhere.
    """

    def __init__(
        self,
        settings: BackendSettings,
        *,
        base_model: str,
        context_window: int,
        count: CountFn | None,
        adapters_dir: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._base = base_model
        self._context_window = context_window
        self._count = count  # None: ask the server's /tokenize
        self._adapters_dir = adapters_dir
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        if api_key and not all("!" <= char <= "~" for char in api_key):
            # The settings refuse such keys; one that got past them must not reach h11, whose
            # error would quote it.
            raise ModelLoadError(
                "backend.api_key cannot be sent as a bearer token: it must be visible ASCII "
                "characters only"
            )
        self._secret = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._base_url = settings.base_url.rstrip("/")
        cap = settings.max_connections or None  # None: no cap
        self._client = httpx.AsyncClient(
            base_url=self._base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s, pool=settings.pool_timeout_s),
            limits=httpx.Limits(max_connections=cap, max_keepalive_connections=cap),
            transport=transport,
        )
        self._paths: dict[str, Path | None] = {DEFAULT_SLOT: None}
        self._names: dict[str, str | None] = {DEFAULT_SLOT: None}  # slot -> LoRA name on server
        self._loaded: set[str] = set()  # LoRA names this process loaded on the server
        self._sources: dict[str, Path] = {}  # loaded LoRA name -> its local directory
        self._reloads: Counter[str] = Counter()  # LoRA name -> times loaded again
        self._in_flight: Counter[str] = Counter()
        self._swap_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        settings: BackendSettings,
        model: ModelSettings,
        *,
        model_dir: Path | None,
        adapters_dir: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> OpenAIGenerator:
        """Ask the server for its models (the base model's name and context length) and load
        the local tokenizer from ``model_dir`` when counting locally. Raises ModelLoadError."""
        probe = cls(settings, base_model="", context_window=0, count=None, transport=transport)
        try:
            listing = await probe._models()
        finally:
            await probe.aclose()
        ids = [str(m.get("id")) for m in listing]
        name = settings.model or (ids[0] if ids else None)
        if name is None or name not in ids:
            raise ModelLoadError(
                f"the model server at {settings.base_url} serves {ids or 'no model'}, "
                f"not {name!r}; set backend.model to one of them"
            )
        served = next(m for m in listing if m.get("id") == name)
        window = int(served.get("max_model_len") or model.max_context_tokens)
        count: CountFn | None = None
        if settings.token_count == "local":
            if model_dir is None:
                raise ModelLoadError("counting tokens locally needs the model directory")
            from bot.engine.tokenizer import ChatTokenizer

            tokenizer = await asyncio.to_thread(ChatTokenizer.load, model_dir)
            count = tokenizer.count
            window = min(window, tokenizer.max_positions or window)
        window = min(window, model.max_context_tokens)
        return cls(
            settings,
            base_model=name,
            context_window=window,
            count=count,
            adapters_dir=adapters_dir,
            transport=transport,
        )

    @property
    def model_name(self) -> str:
        return self._base

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def active_lora(self) -> Path | None:
        return self._paths[DEFAULT_SLOT]

    def slot_lora(self, slot: str) -> Path | None:
        return self._paths.get(slot)

    def served_model(self, slot: str = DEFAULT_SLOT) -> str:
        """The ``model`` a request in ``slot`` names: its LoRA adapter, or the base model."""
        return self._names.get(slot) or self._base

    async def count_tokens(self, turns: Sequence[Turn]) -> int:
        if self._count is not None:
            return await asyncio.to_thread(self._count, tuple(turns))
        body = {"model": self._base, "messages": messages(turns), "add_generation_prompt": True}
        answer = await self._post(self._root_url("/tokenize"), body, GenerationError)
        try:
            return int(answer["count"])
        except (KeyError, TypeError, ValueError):
            raise GenerationError("the model server's /tokenize answer has no count") from None

    async def stream(
        self, turns: Sequence[Turn], params: GenerationParams, *, slot: str = DEFAULT_SLOT
    ) -> AsyncIterator[str]:
        """Yield reply text as the server streams it; closing the generator closes the request.

        A 404 for an adapter this process loaded means the server lost it (it restarted): the
        adapter is loaded again and the request sent once more (nothing was streamed yet)."""
        model = self.served_model(slot)  # before any await: ordered against swaps
        body = request_body(self._settings, turns, params, model)
        self._in_flight[model] += 1
        try:
            for attempt in range(2):
                reloads = self._reloads[model]
                async with self._client.stream("POST", "chat/completions", json=body) as response:
                    if response.status_code < 400:
                        async for piece in sse_pieces(response):
                            yield piece
                        return
                    await response.aread()
                    lost = attempt == 0 and response.status_code == 404 and model in self._sources
                    if not lost:
                        raise GenerationError(
                            f"the model server answered {response.status_code}: "
                            f"{self._server_message(response)}"
                        )
                await self._reload(model, reloads)
        except httpx.HTTPError as exc:
            raise GenerationError(self._transport_failure(exc)) from None
        finally:
            self._in_flight[model] -= 1

    async def swap_lora(self, path: Path | None, *, slot: str = DEFAULT_SLOT) -> None:
        """Load the adapter at ``path`` on the server (once per version) and serve ``slot``
        with it from the next request on; None empties the slot (the base model)."""
        async with self._swap_lock:
            name = None
            if path is not None:
                name = await self._load_on_server(Path(path))
            self._paths[slot], self._names[slot] = path, name
            await self._unload_unused()
        log.info("slot %s serves %s on the model server", slot, name or self._base)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _lora_name(self, path: Path) -> str:
        """One name per adapter version: the directory name plus a digest of where it is and
        when its weights were written, so a rewritten directory never reuses a stale name."""
        weights = path / "adapter_model.safetensors"
        stamp = f"{path.resolve()}:{weights.stat().st_mtime_ns if weights.exists() else 0}"
        return f"selftune-{path.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:8]}"

    def _server_path(self, path: Path) -> str:
        where = self._settings.adapter_dir_on_server
        if where and self._adapters_dir is not None:
            try:
                return str(Path(where) / path.resolve().relative_to(self._adapters_dir.resolve()))
            except ValueError:
                pass  # not under the adapters dir: the server must see it as it is
        return str(path.resolve())

    async def _load_on_server(self, path: Path) -> str:
        if not (path / "adapter_config.json").is_file():
            raise LoraError(f"adapter directory {path} does not exist or is not a PEFT adapter")
        name = self._lora_name(path)
        if name not in self._loaded:
            await self._load_named(name, path)
        return name

    async def _load_named(self, name: str, path: Path) -> None:
        body = {"lora_name": name, "lora_path": self._server_path(path)}
        try:
            response = await self._client.post(self._root_url("/v1/load_lora_adapter"), json=body)
        except httpx.HTTPError as exc:
            raise LoraError(
                f"cannot load adapter {path} on the model server: {self._transport_failure(exc)}"
            ) from None
        message = self._server_message(response) if response.status_code >= 400 else ""
        if response.status_code >= 400 and "already been loaded" not in message:
            raise LoraError(
                f"the model server refused adapter {path} ({response.status_code}: {message}); "
                "is it started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?"
            )
        self._loaded.add(name)
        self._sources[name] = path

    async def _reload(self, name: str, reloads: int) -> None:
        """Load ``name`` again after the server answered that it does not know it (it
        restarted); ``reloads``: its count when the request was sent, so that many requests
        failing together load it once. Raises GenerationError."""
        async with self._swap_lock:
            if self._reloads[name] != reloads:
                return  # another request loaded it again since this one was sent
            log.warning("the model server lost adapter %s (restarted?): loading it again", name)
            self._loaded.discard(name)
            try:
                await self._load_named(name, self._sources[name])
            except LoraError as exc:
                raise GenerationError(
                    f"the model server lost adapter {name} (restarted?) and could not load it "
                    f"again: {exc}"
                ) from None
            self._reloads[name] += 1

    async def _unload_unused(self) -> None:
        """Unload adapters no slot serves and no stream uses (best effort: a leftover only
        costs server memory, and vLLM keeps a bounded LRU of them anyway)."""
        for name in sorted(self._loaded - set(self._names.values())):
            if self._in_flight[name]:
                continue  # a running reply still uses it: the next swap retries
            try:
                response = await self._client.post(
                    self._root_url("/v1/unload_lora_adapter"), json={"lora_name": name}
                )
            except httpx.HTTPError as exc:
                failure = self._transport_failure(exc)
                log.warning("could not unload adapter %s from the model server: %s", name, failure)
                continue
            if response.status_code >= 400:
                log.warning(
                    "the model server kept adapter %s: %s", name, self._redact(response.text[:200])
                )
            self._loaded.discard(name)
            self._sources.pop(name, None)

    def _root_url(self, path: str) -> str:
        """vLLM serves /tokenize and the LoRA endpoints beside /v1, not under base_url."""
        return self._base_url.removesuffix("/v1") + path

    async def _models(self) -> list[dict[str, Any]]:
        answer = await self._post("models", None, ModelLoadError)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise ModelLoadError(f"the model server at {self._base_url} sent no model list")
        return [m for m in data if isinstance(m, dict)]

    async def _post(
        self, url: str, body: dict[str, Any] | None, error: type[Exception]
    ) -> dict[str, Any]:
        """POST ``body`` (GET when None) and return the JSON answer, or raise ``error``."""
        try:
            if body is None:
                response = await self._client.get(url)
            else:
                response = await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise error(self._transport_failure(exc)) from None
        if response.status_code >= 400:
            raise error(
                f"the model server answered {response.status_code}: "
                f"{self._server_message(response)}"
            )
        try:
            answer = response.json()
        except ValueError:
            raise error(f"the model server sent no JSON for {url}") from None
        return answer if isinstance(answer, dict) else {"data": answer}

    def _transport_failure(self, exc: httpx.HTTPError) -> str:
        """What a failed request tells its caller: the failure's kind, never its text, which
        can quote the request's headers (the api key); the text is logged with the key masked."""
        settings = self._settings
        if isinstance(exc, httpx.PoolTimeout):
            return (
                f"no free connection to the model server within {settings.pool_timeout_s:g} s: "
                f"all backend.max_connections = {settings.max_connections} are busy"
            )
        if isinstance(exc, httpx.TimeoutException):
            return f"the model server did not answer within {settings.timeout_s:g} s"
        log.warning(
            "request to the model server failed: %s: %s", type(exc).__name__, self._redact(str(exc))
        )
        return f"cannot reach the model server at {self._base_url} ({type(exc).__name__})"

    def _server_message(self, response: httpx.Response) -> str:
        return self._redact(server_message(response))

    def _redact(self, text: str) -> str:
        """``text`` with the api key, and any bearer token, masked."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return _BEARER.sub(r"\1***", text)
