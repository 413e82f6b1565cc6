"""An A/B test on the transformers engine (the tiny model): chats assigned to the candidate get
exactly the candidate's replies from the second adapter slot, the others the live adapter's,
and every exchange records the version that wrote it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bot.app import build_core
from bot.engine.generator import TransformersGenerator
from bot.settings import LoraSettings, Settings
from bot.types import GenerationParams, Incoming, Turn
from tests.engine.test_generator import make_adapter
from tests.support.records import add_version, say

ME = Incoming("console", "local", "local", "Ann", "")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


async def test_ab_test_on_the_real_engine(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={
            "model": settings.model.model_copy(
                update={"name": str(tiny_model_dir), "dtype": "float32", "max_context_tokens": 256}
            ),
            "generation": settings.generation.model_copy(
                update={"temperature": 0.0, "max_new_tokens": 10, "repetition_penalty": 1.0}
            ),
        }
    )
    paths = [make_adapter(tiny_model_dir, tmp_path / "v1", LoraSettings())]
    torch.manual_seed(2)
    paths.append(make_adapter(tiny_model_dir, tmp_path / "v2", LoraSettings(), scale=0.8))
    generator = await TransformersGenerator.load(settings.model, settings.lora)
    core = await build_core(settings, generator=generator, model_dir=generator.model_dir)
    try:
        for version, path in enumerate(paths, 1):
            await add_version(core.repo, path, version=version)
        await core.versions.activate(1)
        expected = {}
        params = GenerationParams(max_new_tokens=10, temperature=0.0, repetition_penalty=1.0)
        for version, path in enumerate(paths, 1):
            probe = await TransformersGenerator.load(settings.model, settings.lora)
            await probe.swap_lora(path)
            turns = [Turn("system", settings.chat.system_prompt), Turn("user", "hello sea")]
            expected[version] = "".join([p async for p in probe.stream(turns, params)]).strip()
            await probe.aclose()
        assert expected[1] != expected[2]

        assert "A/B test #1 started" in (await say(core, ME, "/ab start 2 0.5")).text
        seen = set()
        for i in range(12):
            who = replace(ME, chat_id=f"c{i}", user_id=f"u{i}")
            reply = await say(core, who, "hello sea")
            assert reply.adapter_version in (1, 2)
            assert reply.text == expected[reply.adapter_version]
            seen.add(reply.adapter_version)
        assert seen == {1, 2}
    finally:
        await core.aclose()
