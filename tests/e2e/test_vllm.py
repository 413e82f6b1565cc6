"""The OpenAI backend against a real vLLM server (CPU build) serving the default model.

Everything goes through selftune's own code as the console uses it (``build_core`` with
``backend.kind = "openai"``, then ``ChatService``): replies stream; rated replies → /finetune
(the real trainer on the real model, a few steps) → the new LoRA is loaded on the server and
answers differently from the base → /rollback unloads it and the base's replies come back → an
A/B test serves base and LoRA side by side → the server restarts and the LoRA is loaded again.

The server comes from ``PYTEST_VLLM_PYTHON`` (``scripts/vllm-venv``); without it these tests
skip, unless ``PYTEST_REQUIRE_VLLM=1`` (CI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from bot.app import Core, build_core
from bot.generation.source import resolve_model
from bot.settings import ModelSettings, Settings
from bot.types import Draft, Incoming, Reply, ReplyKind, RunStatus
from tests.support.records import say
from tests.support.vllm import VllmServer, VllmUnavailable, vllm_python

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
]
NAME = "selftune-base"
ME = Incoming("console", "local", "local", "Ann", "")
PROBE = replace(ME, chat_id="probe", user_id="probe")  # its own chat: same prompt every time


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A vLLM server for the default model (converted to safetensors), stopped at the end."""
    try:
        python = vllm_python()
        model_dir = resolve_model(ModelSettings(), progress=False)
        server = VllmServer(python, model_dir, NAME, tmp_path_factory.mktemp("vllm") / "log")
        server.start()
    except VllmUnavailable as exc:
        if os.environ.get("PYTEST_REQUIRE_VLLM") == "1":
            pytest.fail(f"vLLM is required here (PYTEST_REQUIRE_VLLM=1): {exc}")
        pytest.skip(f"no vLLM: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _settings(settings: Settings, server: VllmServer) -> Settings:
    # Greedy replies (the same every time), a tiny fine-tune with a learning rate high enough
    # that 3 steps change the greedy reply, and no gate (it would evaluate on the real model).
    return settings.model_copy(
        update={
            "backend": settings.backend.model_copy(
                update={"kind": "openai", "base_url": server.base_url, "model": NAME}
            ),
            "generation": settings.generation.model_copy(
                update={"temperature": 0.0, "max_new_tokens": 24}
            ),
            "chat": settings.chat.model_copy(update={"user_messages_per_minute": 0}),
            "training": settings.training.model_copy(
                update={"max_steps": 3, "max_length": 96, "batch_size": 2, "learning_rate": 5e-3}
            ),
            "gate": settings.gate.model_copy(update={"enabled": False}),
        }
    )


async def _probe(core: Core, chat: Incoming = PROBE) -> Reply:
    await core.repo.new_conversation(chat.chat_key)  # the same context every time
    return await say(core, chat, "Tell me about the sea.")


def _loras_on(server: VllmServer) -> list[str]:
    """The LoRA adapters the server has loaded (vLLM lists them beside the base model)."""
    answer = httpx.get(f"{server.base_url}/models", timeout=10.0).json()
    return [m["id"] for m in answer["data"] if m["id"] != NAME]


async def test_replies_stream_from_the_server(settings: Settings, vllm: VllmServer) -> None:
    core = await build_core(_settings(settings, vllm), progress=False)
    try:
        assert core.generator.model_name == NAME
        items = [x async for x in core.service.respond(replace(ME, text="Hello! Who are you?"))]
        drafts = [x.text for x in items if isinstance(x, Draft)]
        reply = items[-1]
        assert isinstance(reply, Reply) and reply.rateable and reply.text.strip()
        assert len(drafts) >= 2, drafts  # it arrived in pieces, not at the end
        assert all(reply.text.startswith(d.rstrip()) for d in drafts), (drafts, reply.text)
        assert (await _probe(core)).text == (await _probe(core)).text  # greedy: reproducible
    finally:
        await core.aclose()


async def test_finetune_serves_the_lora_rollback_unloads_it(
    settings: Settings, vllm: VllmServer
) -> None:
    core = await build_core(_settings(settings, vllm), progress=False)
    try:
        before = (await _probe(core)).text
        for text in ("hello", "how are you?", "what is the sea?", "tell me a joke"):
            await say(core, ME, text)
            await say(core, ME, "/good")
        started = await say(core, ME, "/finetune")
        assert "Fine-tuning started" in started.text
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED, outcome
        assert core.versions.current == 1

        tuned = await _probe(core)
        assert tuned.adapter_version == 1 and tuned.text != before
        assert len(_loras_on(vllm)) == 1

        rolled = await say(core, ME, "/rollback")
        assert "base model" in rolled.text
        assert (await _probe(core)).text == before
        assert _loras_on(vllm) == []

        await _ab_serves_both(core, before, tuned.text)
        await _restart_reloads_the_lora(core, vllm, tuned.text)
    finally:
        await core.aclose()


async def test_a_server_crash_mid_stream_fails_that_reply_only(
    settings: Settings, vllm: VllmServer
) -> None:
    settings = _settings(settings, vllm)
    longer = settings.generation.model_copy(update={"max_new_tokens": 400})
    core = await build_core(settings.model_copy(update={"generation": longer}), progress=False)
    try:
        drafts = 0
        async for item in core.service.respond(replace(ME, text="Write a long story.")):
            drafts += isinstance(item, Draft)
            if drafts == 2:
                vllm.kill()  # mid-reply: the stream breaks off
        assert isinstance(item, Reply) and item.kind is ReplyKind.ERROR, item
        assert "could not write a reply" in item.text and not item.rateable
        vllm.start()
        assert (await _probe(core)).kind is ReplyKind.ANSWER  # the next message is answered
    finally:
        await core.aclose()


async def _ab_serves_both(core: Core, base: str, tuned: str) -> None:
    """An A/B test of v1 against the base: each chat gets its slot's reply, and both serve."""
    started = await say(core, ME, "/ab start 1 0.5")
    assert "A/B test" in started.text, started.text
    seen: set[int | None] = set()
    for i in range(8):
        reply = await _probe(core, replace(PROBE, chat_id=f"ab{i}", user_id=f"ab{i}"))
        assert reply.text == (tuned if reply.adapter_version == 1 else base), reply
        seen.add(reply.adapter_version)
    assert seen == {None, 1}


async def _restart_reloads_the_lora(core: Core, vllm: VllmServer, tuned: str) -> None:
    """The server restarts and forgets its LoRAs: the next LoRA reply loads it again."""
    await say(core, ME, "/ab promote")
    assert core.versions.current == 1
    vllm.restart()
    assert _loras_on(vllm) == []
    assert (await _probe(core)).text == tuned
    assert len(_loras_on(vllm)) == 1
