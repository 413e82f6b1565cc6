"""The OpenAI-compatible backend against a fake vLLM-style server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from transformers import AutoTokenizer

from bot.app import build_core
from bot.errors import ConfigError, GenerationError, LoraError, ModelLoadError, StartupError
from bot.generation import DEFAULT_SLOT, Generator
from bot.generation.openai_api import OpenAIGenerator
from bot.generation.template import chat_ids
from bot.logs import RedactSecrets, settings_secrets
from bot.settings import BackendSettings, ModelSettings, Settings, load_settings
from bot.startup import load_generator
from bot.types import GenerationParams, Incoming, Reply, ReplyKind, Turn
from tests.fakes.openai_server import BASE_MODEL, MAX_MODEL_LEN, Failure, FakeOpenAI

HELLO = [Turn("system", "Be kind."), Turn("user", "Hello there")]
GREEDY = GenerationParams(max_new_tokens=50, temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def backend(server: FakeOpenAI, **overrides: Any) -> BackendSettings:
    return BackendSettings(kind="openai", base_url=server.base_url, **overrides)


@contextlib.asynccontextmanager
async def connected(
    server: FakeOpenAI, model_dir: Path, adapters_dir: Path | None = None, **overrides: Any
) -> AsyncIterator[OpenAIGenerator]:
    model = ModelSettings(name=str(model_dir))
    gen = await OpenAIGenerator.connect(
        backend(server, **overrides), model, model_dir=model_dir, adapters_dir=adapters_dir
    )
    try:
        yield gen
    finally:
        await gen.aclose()


@pytest.fixture
async def gen(server: FakeOpenAI, tiny_model_dir: Path) -> AsyncIterator[OpenAIGenerator]:
    async with connected(server, tiny_model_dir) as generator:
        yield generator


def make_adapter_dir(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


async def reply(
    gen: OpenAIGenerator,
    turns: list[Turn],
    params: GenerationParams = GREEDY,
    slot: str = DEFAULT_SLOT,
) -> str:
    return "".join([piece async for piece in gen.stream(turns, params, slot=slot)])


def chats(server: FakeOpenAI) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"] == "/v1/chat/completions"]


async def test_streams_the_servers_reply_in_pieces(
    gen: OpenAIGenerator, server: FakeOpenAI
) -> None:
    assert isinstance(gen, Generator)
    assert gen.model_name == BASE_MODEL
    pieces = [piece async for piece in gen.stream(HELLO, GREEDY)]
    assert len(pieces) > 1
    assert "".join(pieces) == f"[{BASE_MODEL}] Hello there"
    sent = chats(server)[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello there"},
    ]
    assert sent["stream"] is True
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (50, 0.0, 1.0)
    assert "top_k" not in sent and "repetition_penalty" not in sent


async def test_each_request_sends_its_own_sampling_params(
    gen: OpenAIGenerator, server: FakeOpenAI
) -> None:
    sampled = GenerationParams(
        max_new_tokens=2, temperature=0.8, top_p=0.9, top_k=40, repetition_penalty=1.2, seed=7
    )
    assert await reply(gen, HELLO, sampled) == f"[{BASE_MODEL}] Hello"  # max_tokens: 2 words
    sent = chats(server)[-1]
    assert {k: sent[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed")} == {
        "max_tokens": 2,
        "temperature": 0.8,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
    }
    assert sent["repetition_penalty"] == 1.2


async def test_strict_servers_get_no_sampling_extras(
    server: FakeOpenAI, tiny_model_dir: Path
) -> None:
    sampled = GenerationParams(temperature=0.8, top_k=40, repetition_penalty=1.2)
    async with connected(server, tiny_model_dir, sampling_extras=False) as gen:
        await reply(gen, HELLO, sampled)
    assert "top_k" not in chats(server)[-1] and "repetition_penalty" not in chats(server)[-1]


async def test_concurrent_streams_are_served_together(
    gen: OpenAIGenerator, server: FakeOpenAI
) -> None:
    server.delay_s = 0.05
    started = time.perf_counter()
    texts = await asyncio.gather(*(reply(gen, [Turn("user", f"chat {i}")]) for i in range(8)))
    elapsed = time.perf_counter() - started
    assert texts == [f"[{BASE_MODEL}] chat {i}" for i in range(8)]
    assert elapsed < 8 * 3 * 0.05  # not one after another


async def test_count_tokens_uses_the_local_chat_template(
    gen: OpenAIGenerator, tiny_model_dir: Path, server: FakeOpenAI
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": t.role, "content": t.content} for t in HELLO]
    expected = len(chat_ids(tokenizer, messages, add_generation_prompt=True))
    assert await gen.count_tokens(HELLO) == expected
    assert not [r for r in server.requests if r["path"] == "/tokenize"]
    assert gen.context_window == 256  # the tiny model's max_position_embeddings


async def test_count_tokens_can_ask_the_server(server: FakeOpenAI, tiny_model_dir: Path) -> None:
    async with connected(server, tiny_model_dir, token_count="server") as gen:
        assert await gen.count_tokens(HELLO) == 2 + 4 + 2 + 4 + 3
        assert gen.context_window == MAX_MODEL_LEN
    sent = [r for r in server.requests if r["path"] == "/tokenize"][-1]
    assert sent["model"] == BASE_MODEL and sent["add_generation_prompt"] is True


async def test_swaps_load_adapters_on_the_server_and_requests_name_them(
    gen: OpenAIGenerator, server: FakeOpenAI, tmp_path: Path
) -> None:
    v1, v2 = make_adapter_dir(tmp_path, "v1"), make_adapter_dir(tmp_path, "v2")
    await gen.swap_lora(v1)
    assert gen.active_lora == v1
    (name1,) = server.loras
    assert name1.startswith("selftune-v1-") and server.loras[name1] == str(v1.resolve())
    assert await reply(gen, HELLO) == f"[{name1}] Hello there"
    await gen.swap_lora(v2, slot="candidate")
    assert gen.slot_lora("candidate") == v2
    name2 = gen.served_model("candidate")
    both = await asyncio.gather(reply(gen, HELLO), reply(gen, HELLO, slot="candidate"))
    assert list(both) == [f"[{name1}] Hello there", f"[{name2}] Hello there"]  # gather: a list
    await gen.swap_lora(None)
    assert gen.active_lora is None
    assert await reply(gen, HELLO) == f"[{BASE_MODEL}] Hello there"
    assert server.unloaded == [name1]  # nothing serves it any more
    await gen.swap_lora(v2)  # the same version in two slots: loaded once
    assert gen.served_model() == name2 and len(server.loras) == 1


async def test_a_running_reply_keeps_its_adapter_across_a_swap(
    gen: OpenAIGenerator, server: FakeOpenAI, tmp_path: Path
) -> None:
    v1, v2 = make_adapter_dir(tmp_path, "v1"), make_adapter_dir(tmp_path, "v2")
    await gen.swap_lora(v1)
    name1 = gen.served_model()
    server.delay_s = 0.02
    stream = gen.stream(HELLO, GREEDY)
    head = await anext(stream)
    await gen.swap_lora(v2)
    assert name1 in server.loras  # still in use: not unloaded under the running reply
    rest = [piece async for piece in stream]
    assert head + "".join(rest) == f"[{name1}] Hello there"
    await gen.swap_lora(v2, slot="candidate")  # the next swap cleans it up
    assert name1 in server.unloaded


async def test_adapter_paths_map_to_where_the_server_sees_them(
    server: FakeOpenAI, tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapters = tmp_path / "adapters"
    v1 = make_adapter_dir(adapters, "v1")
    mirror = tmp_path / "mounted"
    make_adapter_dir(mirror, "v1")
    async with connected(
        server, tiny_model_dir, adapters_dir=adapters, adapter_dir_on_server=str(mirror)
    ) as gen:
        await gen.swap_lora(v1)
    assert list(server.loras.values()) == [str(mirror / "v1")]


async def test_refused_adapters_leave_the_slot_as_it_was(
    gen: OpenAIGenerator, server: FakeOpenAI, tmp_path: Path
) -> None:
    v1 = make_adapter_dir(tmp_path, "v1")
    await gen.swap_lora(v1)
    with pytest.raises(LoraError, match="does not exist"):
        await gen.swap_lora(tmp_path / "missing")
    unseen = make_adapter_dir(tmp_path, "v2")
    server_side = Path(server.loras[gen.served_model()]).parent / "v2"
    assert server_side == unseen  # same machine: the fake sees it, so make it vanish there
    (unseen / "adapter_config.json").rename(unseen / "moved.json")
    with pytest.raises(LoraError):
        await gen.swap_lora(unseen)
    assert gen.active_lora == v1


async def test_server_errors_are_generation_errors(
    gen: OpenAIGenerator, server: FakeOpenAI
) -> None:
    server.fail_next = Failure(503, "The model is overloaded")
    with pytest.raises(GenerationError, match="503: The model is overloaded"):
        await reply(gen, HELLO)
    server.fail_next = Failure(message="CUDA out of memory", after_words=1)
    pieces: list[str] = []
    with pytest.raises(GenerationError, match="CUDA out of memory"):
        async for piece in gen.stream(HELLO, GREEDY):
            pieces.append(piece)
    assert pieces == [f"[{BASE_MODEL}]"]
    assert await reply(gen, HELLO) == f"[{BASE_MODEL}] Hello there"  # and it goes on


async def test_unreachable_and_slow_servers_are_clear_errors(
    server: FakeOpenAI, tiny_model_dir: Path
) -> None:
    async with connected(server, tiny_model_dir, timeout_s=0.1) as gen:
        server.delay_s = 0.5
        with pytest.raises(GenerationError, match=r"did not answer within 0\.1 s"):
            await reply(gen, HELLO)
        server.delay_s = 0.0
        await server.__aexit__()
        with pytest.raises(GenerationError, match="cannot reach the model server"):
            await reply(gen, HELLO)


async def test_api_key_is_sent_as_a_bearer_token(tiny_model_dir: Path) -> None:
    async with FakeOpenAI(api_key="sk-test") as server:
        with pytest.raises(ModelLoadError, match="401"):
            await OpenAIGenerator.connect(
                backend(server), ModelSettings(), model_dir=tiny_model_dir
            )
        async with connected(server, tiny_model_dir, api_key=SecretStr("sk-test")) as gen:
            assert await reply(gen, HELLO) == f"[{BASE_MODEL}] Hello there"


async def test_connect_checks_the_served_model(server: FakeOpenAI, tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="not 'other/model'"):
        await OpenAIGenerator.connect(
            backend(server, model="other/model"), ModelSettings(), model_dir=tiny_model_dir
        )


def openai_settings(settings: Settings, server: FakeOpenAI, model_dir: Path) -> Settings:
    model = settings.model.model_copy(update={"name": str(model_dir)})
    generation = settings.generation.model_copy(update={"max_new_tokens": 64})  # tiny window
    return settings.model_copy(
        update={"backend": backend(server), "model": model, "generation": generation}
    )


async def test_load_generator_picks_the_backend(
    settings: Settings, server: FakeOpenAI, tiny_model_dir: Path
) -> None:
    gen, model_dir = await load_generator(openai_settings(settings, server, tiny_model_dir))
    try:
        assert isinstance(gen, OpenAIGenerator)
        assert model_dir == tiny_model_dir  # training still finds the local model
    finally:
        await gen.aclose()
    await server.__aexit__()
    with pytest.raises(StartupError, match="cannot reach the model server"):
        await load_generator(openai_settings(settings, server, tiny_model_dir))


async def test_the_chat_service_answers_through_the_backend(
    settings: Settings, server: FakeOpenAI, tiny_model_dir: Path
) -> None:
    configured = openai_settings(settings, server, tiny_model_dir)
    core = await build_core(configured, progress=False)
    try:
        incoming = Incoming("console", "local", "local", "Ada", "Hi there", None, True)
        items = [item async for item in core.service.respond(incoming)]
    finally:
        await core.aclose()
    final = items[-1]
    assert isinstance(final, Reply) and final.kind is ReplyKind.ANSWER
    assert final.text == f"[{BASE_MODEL}] Hi there"
    assert chats(server)[-1]["messages"][0]["role"] == "system"


# --- the api key never leaks (it is checked in the settings, and masked everywhere) ---

LEAKY = "sk-leaky-secret"


def test_api_key_is_checked_in_the_settings(tmp_path: Path) -> None:
    key = BackendSettings(api_key=SecretStr(" sk-test\n")).api_key
    assert key is not None and key.get_secret_value() == "sk-test"  # stray whitespace trimmed
    assert BackendSettings(api_key=SecretStr("  ")).api_key is None
    for bad in (f"{LEAKY}\nX-Evil: 1", f"{LEAKY} two", "sk-ключ-leaky-secret"):
        env = {"SELFTUNE_DATA_DIR": str(tmp_path), "SELFTUNE_BACKEND__API_KEY": bad}
        with pytest.raises(ConfigError, match=r"backend\.api_key") as caught:
            load_settings(None, env)
        assert "visible ASCII" in str(caught.value)
        assert "leaky" not in str(caught.value) and "ключ" not in str(caught.value)
        with pytest.raises(ValidationError) as direct:
            BackendSettings(api_key=bad)  # a plain string, as TOML would give it
        assert "leaky" not in str(direct.value) and "ключ" not in str(direct.value)


def test_the_backend_api_key_is_masked_in_logs(settings: Settings) -> None:
    with_key = settings.model_copy(
        update={"backend": BackendSettings(kind="openai", api_key=SecretStr(LEAKY))}
    )
    assert LEAKY in settings_secrets(with_key)
    redacted = RedactSecrets(settings_secrets(with_key)).redact(f"header Bearer {LEAKY}!")
    assert redacted == "header Bearer ***!"


def _leaks(text: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Where the key shows: in ``text`` or any log record (message or traceback)."""
    shown = [text] + [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    return [s for s in shown if "leaky" in s]


@pytest.mark.parametrize("bad", [f"{LEAKY}\n", f"{LEAKY}\r\nX-Evil: 1", "sk-ключ-leaky"])
async def test_an_unsendable_api_key_is_a_clear_error_without_the_key(
    bad: str, server: FakeOpenAI, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unchecked = backend(server).model_copy(update={"api_key": SecretStr(bad)})  # not validated
    with pytest.raises(ModelLoadError, match=r"backend\.api_key") as caught:
        await OpenAIGenerator.connect(unchecked, ModelSettings(), model_dir=tiny_model_dir)
    assert not _leaks(str(caught.value), caplog)


async def test_transport_errors_that_carry_headers_do_not_leak_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers["Authorization"]
        raise httpx.LocalProtocolError(f"Illegal header value b'{auth}'", request=request)

    settings = BackendSettings(kind="openai", api_key=SecretStr(LEAKY))
    gen = OpenAIGenerator(
        settings,
        base_model=BASE_MODEL,
        context_window=MAX_MODEL_LEN,
        count=None,
        transport=httpx.MockTransport(handler),
    )
    try:
        errors: list[BaseException] = []
        with pytest.raises(GenerationError, match="cannot reach the model server") as streamed:
            await reply(gen, HELLO)
        errors.append(streamed.value)
        with pytest.raises(GenerationError, match="cannot reach the model server") as counted:
            await gen.count_tokens(HELLO)
        errors.append(counted.value)
        with pytest.raises(LoraError, match="cannot load adapter") as loaded:
            await gen.swap_lora(make_adapter_dir(tmp_path, "v1"))
        errors.append(loaded.value)
    finally:
        await gen.aclose()
    for error in errors:
        assert "LocalProtocolError" in str(error)
        assert not _leaks(str(error), caplog)
    assert any("Illegal header value" in r.getMessage() for r in caplog.records)  # redacted


# --- a restarted server gets its adapters back ---


def loads(server: FakeOpenAI) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["path"] == "/v1/load_lora_adapter"]


async def test_adapters_a_restarted_server_lost_are_loaded_again(
    gen: OpenAIGenerator, server: FakeOpenAI, tmp_path: Path
) -> None:
    v1 = make_adapter_dir(tmp_path, "v1")
    await gen.swap_lora(v1)
    name = gen.served_model()
    server.restart()
    assert await reply(gen, HELLO) == f"[{name}] Hello there"
    assert name in server.loras and len(loads(server)) == 2
    assert [r["model"] for r in chats(server)] == [name, name]  # the 404, then the retry
    server.restart()
    texts = await asyncio.gather(*(reply(gen, [Turn("user", f"chat {i}")]) for i in range(5)))
    assert texts == [f"[{name}] chat {i}" for i in range(5)]
    assert len(loads(server)) == 3  # once for the five
    server.restart()
    server.fail_next = Failure(404, f"The model `{name}` does not exist.")  # for the retry
    before = len(chats(server))
    with pytest.raises(GenerationError, match="404"):
        await reply(gen, HELLO)
    assert len(chats(server)) == before + 2  # retried once, not more
    (v1 / "adapter_config.json").rename(v1 / "moved.json")  # now it cannot come back
    server.restart()
    with pytest.raises(GenerationError, match=f"lost adapter {name}.*could not load it again"):
        await reply(gen, HELLO)


async def test_a_lost_adapter_is_loaded_again_where_the_server_sees_it(
    server: FakeOpenAI, tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapters, mirror = tmp_path / "adapters", tmp_path / "mounted"
    v1 = make_adapter_dir(adapters, "v1")
    make_adapter_dir(mirror, "v1")
    async with connected(
        server, tiny_model_dir, adapters_dir=adapters, adapter_dir_on_server=str(mirror)
    ) as gen:
        await gen.swap_lora(v1)
        server.restart()
        assert await reply(gen, HELLO) == f"[{gen.served_model()}] Hello there"
    assert [r["lora_path"] for r in loads(server)] == [str(mirror / "v1")] * 2


async def test_a_missing_base_model_is_not_retried(
    gen: OpenAIGenerator, server: FakeOpenAI
) -> None:
    server.fail_next = Failure(404, f"The model `{BASE_MODEL}` does not exist.")
    with pytest.raises(GenerationError, match="404"):
        await reply(gen, HELLO)
    assert len(chats(server)) == 1 and not loads(server)


# --- malformed events are generation errors ---


def sse_generator(body: bytes) -> OpenAIGenerator:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    return OpenAIGenerator(
        BackendSettings(kind="openai"),
        base_model=BASE_MODEL,
        context_window=MAX_MODEL_LEN,
        count=None,
        transport=httpx.MockTransport(handler),
    )


@pytest.mark.parametrize(
    "event",
    [
        '["x"]',
        '"x"',
        "7",
        '{"choices": ["x"]}',
        '{"choices": {"delta": {"content": "x"}}}',
        '{"choices": [{"delta": "x"}]}',
        '{"choices": [{"delta": {"content": 7}}]}',
    ],
)
async def test_malformed_events_are_generation_errors(event: str) -> None:
    ok = '{"choices": [{"delta": {"content": "fine"}}]}'
    gen = sse_generator(f"data: {ok}\n\ndata: {event}\n\ndata: [DONE]\n\n".encode())
    pieces: list[str] = []
    try:
        with pytest.raises(GenerationError, match="malformed event"):
            async for piece in gen.stream(HELLO, GREEDY):
                pieces.append(piece)
    finally:
        await gen.aclose()
    assert pieces == ["fine"]


async def test_events_without_text_are_skipped() -> None:
    events = [
        '{"choices": []}',
        '{"choices": null}',
        '{"choices": [{"delta": {}, "finish_reason": "stop"}]}',
        '{"choices": [{"delta": {"role": "assistant", "content": null}}]}',
        '{"choices": [{"delta": {"content": "ok"}}], "usage": null}',
    ]
    gen = sse_generator("".join(f"data: {e}\n\n" for e in events).encode() + b"data: [DONE]\n\n")
    try:
        assert await reply(gen, HELLO) == "ok"
    finally:
        await gen.aclose()


# --- many chats at once: no connection cap, and a clear error when one is set and full ---


async def test_more_chats_than_httpx_default_pool_are_served(
    server: FakeOpenAI, tiny_model_dir: Path
) -> None:
    server.delay_s = 0.15  # a stream lasts ~1.5 s, each word comes well within the timeout
    long = [Turn("user", "a b c d e f g h i")]
    async with connected(server, tiny_model_dir, timeout_s=1.0) as gen:
        texts = await asyncio.gather(*(reply(gen, long) for _ in range(120)))
    assert texts == [f"[{BASE_MODEL}] a b c d e f g h i"] * 120


async def test_a_full_connection_pool_is_its_own_error(
    server: FakeOpenAI, tiny_model_dir: Path
) -> None:
    server.delay_s = 0.2
    async with connected(
        server, tiny_model_dir, max_connections=1, pool_timeout_s=0.1, timeout_s=5.0
    ) as gen:
        first = gen.stream(HELLO, GREEDY)
        await anext(first)  # holds the only connection
        with pytest.raises(GenerationError, match=r"backend\.max_connections = 1") as caught:
            await reply(gen, HELLO)
        assert "did not answer" not in str(caught.value)
        assert inspect.isasyncgen(first)  # closing it frees the connection
        await first.aclose()
        assert await reply(gen, HELLO) == f"[{BASE_MODEL}] Hello there"  # free again


# --- the fake checks the bearer token on every endpoint, and the backend sends it ---


async def test_every_endpoint_needs_the_api_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    async with FakeOpenAI(api_key="sk-test") as server:
        root = server.base_url.removesuffix("/v1")
        async with httpx.AsyncClient() as anonymous:
            answers = [
                await anonymous.get(f"{root}/v1/models"),
                await anonymous.post(f"{root}/v1/chat/completions", json={}),
                await anonymous.post(f"{root}/tokenize", json={}),
                await anonymous.post(f"{root}/v1/load_lora_adapter", json={}),
                await anonymous.post(f"{root}/v1/unload_lora_adapter", json={}),
            ]
        assert [a.status_code for a in answers] == [401] * 5
        assert not server.requests  # refused before anything is recorded
        async with connected(
            server, tiny_model_dir, api_key=SecretStr("sk-test"), token_count="server"
        ) as gen:
            assert await gen.count_tokens(HELLO) > 0
            await gen.swap_lora(make_adapter_dir(tmp_path, "v1"))
            name = gen.served_model()
            assert await reply(gen, HELLO) == f"[{name}] Hello there"
            await gen.swap_lora(None)
        assert server.unloaded == [name]
