"""The product's loop on a tiny real model: chat → rate → fine-tune (real trainer subprocess)
→ the next reply comes from the new adapter → rollback restores the earlier replies exactly →
a restart keeps the active adapter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from bot.app import Core
from bot.settings import Settings
from bot.types import Incoming, Reply, RunStatus
from tests.support.records import say
from tests.support.tinymodel import tiny_core, tiny_settings

ME = Incoming("console", "local", "local", "Ann", "")
PROBE = replace(ME, chat_id="probe", user_id="probe")  # its own chat: same prompt every time


def _settings(settings: Settings, model_dir: Path) -> Settings:
    # Three ratings are too few for the gate to judge; it serves the new adapter anyway.
    return tiny_settings(
        settings, model_dir, max_new_tokens=12, epochs=8.0, learning_rate=5e-3, max_length=128
    )


async def _say(core: Core, text: str, who: Incoming = ME) -> Reply:
    return await say(core, who, text)


async def _probe(core: Core) -> str:
    await core.repo.new_conversation(PROBE.chat_key)  # the same context every time
    return (await _say(core, "Tell me about the sea.", PROBE)).text


def _base_weights(core: Core) -> dict[str, torch.Tensor]:
    model = core.generator._model  # type: ignore[attr-defined]
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


async def _assert_new_adapter_files(core: Core) -> None:
    # The new adapter: standard PEFT files, LoRA B weights moved away from zero.
    version = await core.repo.adapters.get(1)
    assert version is not None
    files = {p.name for p in Path(version.path).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    weights = load_file(str(Path(version.path) / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())
    assert len(version.exchange_ids) == 3


async def _assert_rollback_and_activate(core: Core, before: str, after: str) -> None:
    # /rollback brings back the base model's exact replies; /activate 1 the adapter's.
    rolled = await _say(core, "/rollback")
    assert "base model" in rolled.text
    assert await _probe(core) == before

    await _say(core, "/activate 1")
    assert await _probe(core) == after


async def test_rate_finetune_swap_rollback_restart(
    settings: Settings, tiny_model_dir: Path
) -> None:
    settings = _settings(settings, tiny_model_dir)
    core = await tiny_core(settings)
    try:
        before = await _probe(core)
        base = _base_weights(core)
        for text in ("hello", "how are you?", "what is the sea?"):
            await _say(core, text)
            await _say(core, "/good")
        started = await _say(core, "/finetune")
        assert "Fine-tuning started" in started.text
        chatting = await _say(core, "still answering while training?")
        assert chatting.rateable
        outcome = await core.finetuner.wait()
        assert outcome is not None and outcome.status is RunStatus.SUCCEEDED, outcome
        assert core.versions.current == 1

        await _assert_new_adapter_files(core)

        after = await _probe(core)
        assert after != before
        for name, tensor in _base_weights(core).items():
            assert torch.equal(tensor, base[name]), name

        await _assert_rollback_and_activate(core, before, after)
    finally:
        await core.aclose()

    restarted = await tiny_core(settings)
    try:
        assert restarted.versions.current == 1
        assert await _probe(restarted) == after
    finally:
        await restarted.aclose()
