"""Adapter slots of the transformers Generator: a second adapter served in the same batches.

The reference is :class:`bot.generation.ScriptedGenerator`: any slot name works, an empty slot
serves the zero adapter, and ``swap_lora(None, slot=...)`` empties a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from bot.engine.generator import TransformersGenerator, resolve_model
from bot.engine.slots import LORA_MIN_ROWS, LoraRouter
from bot.errors import LoraError
from bot.generation import DEFAULT_SLOT, ScriptedGenerator
from bot.settings import LoraSettings, ModelSettings
from bot.types import GenerationParams, Turn
from tests.engine.test_generator import loaded, make_adapter
from tests.support.generation import HELLO, PROMPTS, eventually

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
CANDIDATE = "candidate"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different adapters of the deployment's shape."""
    root = tmp_path_factory.mktemp("slot-adapters")
    first = make_adapter(tiny_model_dir, root / "a", LoraSettings())
    torch.manual_seed(2)
    second = make_adapter(tiny_model_dir, root / "b", LoraSettings(), scale=0.8)
    return first, second


@pytest.fixture
async def generator(tiny_model_dir: Path) -> AsyncIterator[TransformersGenerator]:
    async with loaded(tiny_model_dir) as gen:
        yield gen


async def reply(
    gen: TransformersGenerator,
    turns: list[Turn],
    slot: str = DEFAULT_SLOT,
    params: GenerationParams = GREEDY,
) -> str:
    return "".join([piece async for piece in gen.stream(turns, params, slot=slot)])


async def solo_replies(gen: TransformersGenerator, adapter: Path | None) -> list[str]:
    """Each prompt alone, with ``adapter`` in the default slot."""
    await gen.swap_lora(adapter)
    return [await reply(gen, turns) for turns in PROMPTS]


@pytest.mark.parametrize("default_has_adapter", [False, True])
async def test_candidate_rows_equal_that_adapter_alone_and_default_rows_are_unaffected(
    generator: TransformersGenerator, adapters: tuple[Path, Path], default_has_adapter: bool
) -> None:
    candidate, other = adapters
    default = other if default_has_adapter else None
    want_candidate = await solo_replies(generator, candidate)
    want_default = await solo_replies(generator, default)
    assert want_candidate != want_default
    await generator.swap_lora(candidate, slot=CANDIDATE)
    assert generator.slot_lora(CANDIDATE) == candidate
    assert generator.active_lora == default
    # Interleaved: every batch mixes both slots (and rows of one slot are not contiguous).
    jobs = [
        reply(generator, turns, slot=slot)
        for turns in PROMPTS
        for slot in (CANDIDATE, DEFAULT_SLOT)
    ]
    results = await asyncio.gather(*jobs)
    assert generator.stats.max_batch == len(jobs)
    assert list(results[0::2]) == want_candidate
    assert list(results[1::2]) == want_default


async def test_a_lone_candidate_row_joins_a_running_batch(
    generator: TransformersGenerator, adapters: tuple[Path, Path]
) -> None:
    candidate, _ = adapters
    params = GenerationParams(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0)
    want_default = await reply(generator, PROMPTS[1], params=params)
    await generator.swap_lora(candidate)
    want_candidate = await reply(generator, PROMPTS[2], params=params)
    await generator.swap_lora(None)
    await generator.swap_lora(candidate, slot=CANDIDATE)
    first = generator.stream(PROMPTS[1], params)
    head = [await anext(first)]
    late = asyncio.create_task(reply(generator, PROMPTS[2], slot=CANDIDATE, params=params))
    rest = [piece async for piece in first]
    assert "".join(head + rest) == want_default
    assert await late == want_candidate


async def test_empty_slot_serves_the_zero_adapter(
    generator: TransformersGenerator, adapters: tuple[Path, Path]
) -> None:
    base = await reply(generator, HELLO)
    assert generator.slot_lora(CANDIDATE) is None
    assert await reply(generator, HELLO, slot=CANDIDATE) == base  # never filled
    await generator.swap_lora(adapters[0], slot=CANDIDATE)
    assert await reply(generator, HELLO, slot=CANDIDATE) != base
    await generator.swap_lora(None, slot=CANDIDATE)
    assert generator.slot_lora(CANDIDATE) is None
    assert await reply(generator, HELLO, slot=CANDIDATE) == base
    assert generator.active_lora is None


async def test_swap_does_not_wait_for_running_sequences_and_they_keep_their_adapter(
    generator: TransformersGenerator, adapters: tuple[Path, Path]
) -> None:
    first, second = adapters
    params = GenerationParams(max_new_tokens=60, temperature=0.0, repetition_penalty=1.0)
    await generator.swap_lora(first)
    want_first = await reply(generator, HELLO, params=params)
    stream = generator.stream(HELLO, params)
    head = [await anext(stream)]
    for adapter in (second, None, second):  # each swap lands while the sequence runs
        await generator.swap_lora(adapter)
        assert generator.stats.active == 1
    assert generator.active_lora == second
    rest = [piece async for piece in stream]
    assert "".join(head + rest) == want_first
    assert await reply(generator, HELLO, params=params) != want_first


async def test_the_adapter_pool_stays_small(
    generator: TransformersGenerator, adapters: tuple[Path, Path]
) -> None:
    for _ in range(5):
        for adapter in adapters:
            await generator.swap_lora(adapter)
            await generator.swap_lora(adapter, slot=CANDIDATE)
    assert await reply(generator, HELLO)
    await eventually(lambda: generator.stats.active == 0)
    assert generator.lora_pool_size <= 3  # two slots, plus one spare to copy into


async def test_a_refused_adapter_leaves_the_slot_as_it_was(
    generator: TransformersGenerator, adapters: tuple[Path, Path], tmp_path: Path
) -> None:
    await generator.swap_lora(adapters[0], slot=CANDIDATE)
    want = await reply(generator, HELLO, slot=CANDIDATE)
    with pytest.raises(LoraError):
        await generator.swap_lora(tmp_path / "missing", slot=CANDIDATE)
    assert generator.slot_lora(CANDIDATE) == adapters[0]
    assert await reply(generator, HELLO, slot=CANDIDATE) == want


async def test_scripted_generator_has_the_same_slot_semantics() -> None:
    gen = ScriptedGenerator()
    assert gen.slot_lora(CANDIDATE) is None
    await gen.swap_lora(Path("/adapters/v2"), slot=CANDIDATE)
    assert gen.slot_lora(CANDIDATE) == Path("/adapters/v2")
    assert gen.active_lora is None
    await gen.swap_lora(None, slot=CANDIDATE)
    assert gen.slot_lora(CANDIDATE) is None


def test_from_four_rows_on_a_float32_row_computes_the_same_in_any_company() -> None:
    """The assumption behind the router's padding of small groups to LORA_MIN_ROWS: a row of
    a float32 matmul over 4 or more rows does not depend on how many rows there are."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 8, bias=False)
    x = torch.randn(12, 64)
    alone = torch.nn.functional.linear(x[:1].repeat(LORA_MIN_ROWS, 1), layer.weight)[0]
    for rows in range(LORA_MIN_ROWS, 12):
        assert torch.equal(torch.nn.functional.linear(x[:rows], layer.weight)[0], alone)


def test_router_refuses_lora_on_non_linear_layers() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lora_A = torch.nn.ModuleDict()

    with pytest.raises(ValueError, match="linear layers only"):
        LoraRouter(torch.nn.Sequential(torch.nn.Linear(2, 2), Odd()))


@pytest.mark.slow
async def test_default_model_serves_a_candidate_in_mixed_batches(tmp_path: Path) -> None:
    """The real model in its automatic precision: a candidate row decodes as its adapter does
    alone in the default slot, and default rows beside it as they do alone."""
    settings = ModelSettings()
    model_dir = resolve_model(settings, progress=False)
    adapter = make_adapter(model_dir, tmp_path / "adapter", LoraSettings(), scale=0.02)
    prompts = [[Turn("user", "Hello!")], [Turn("user", "Tell me about the sea.")]]
    params = GenerationParams(max_new_tokens=32, temperature=0.0)
    gen = await TransformersGenerator.load(settings, LoraSettings())
    try:
        base = [await reply(gen, turns, params=params) for turns in prompts]
        await gen.swap_lora(adapter)
        adapted = [await reply(gen, turns, params=params) for turns in prompts]
        await gen.swap_lora(None)
        await gen.swap_lora(adapter, slot=CANDIDATE)
        jobs = [
            reply(gen, t, slot=s, params=params) for t in prompts for s in (CANDIDATE, DEFAULT_SLOT)
        ]
        mixed = await asyncio.gather(*jobs)
    finally:
        await gen.aclose()
    assert adapted != base
    assert list(mixed[0::2]) == adapted
    assert list(mixed[1::2]) == base
