"""The engine's KV cache: right-padded rows, batch-invariant attention, shared prefixes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from bot.engine.attention import _batched
from bot.engine.generator import TransformersGenerator, cpu_bf16_supported
from bot.engine.kv_cache import BLOCK, RowCache
from bot.settings import LoraSettings
from bot.types import GenerationParams, Turn
from tests.engine.test_generator import loaded, make_adapter
from tests.support.generation import PROMPTS

GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
SYSTEM = Turn("system", "You are a sailor who loves the deep blue sea and small boats.")
CHATS = [[SYSTEM, Turn("user", text)] for text in ("Hi", "Tell me a story", "why not?")]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


async def reply(
    gen: TransformersGenerator, turns: list[Turn], params: GenerationParams = GREEDY
) -> str:
    return "".join([piece async for piece in gen.stream(turns, params)])


async def test_the_system_turn_is_prefilled_once_and_replies_do_not_depend_on_it(
    tiny_model_dir: Path,
) -> None:
    async with loaded(tiny_model_dir) as gen:
        warm = [await reply(gen, turns) for turns in CHATS]
        stats = gen.prefix_stats
        assert (stats.misses, stats.hits) == (1, 2)
        assert stats.reused_tokens == 2 * gen.encode(CHATS[0]).shared > 0
    async with loaded(tiny_model_dir) as cold:  # other order: each prefix state differs
        assert [await reply(cold, turns) for turns in reversed(CHATS)] == warm[::-1]
    async with loaded(tiny_model_dir, prefix_cache_tokens=0) as off:
        assert await reply(off, CHATS[1]) == warm[1]
        assert off.prefix_stats.hits == 0


async def test_prefixes_are_cached_per_adapter_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    first = make_adapter(tiny_model_dir, tmp_path / "a", LoraSettings())
    torch.manual_seed(5)
    second = make_adapter(tiny_model_dir, tmp_path / "b", LoraSettings(), scale=0.9)
    async with loaded(tiny_model_dir) as gen:
        base = await reply(gen, CHATS[0])
        await gen.swap_lora(first)
        adapted = await reply(gen, CHATS[0])
        await gen.swap_lora(second, slot="candidate")
        await gen.swap_lora(None, slot="candidate")
        await gen.swap_lora(second)  # may reuse a pooled adapter: its cache entry is stale
        other = await reply(gen, CHATS[0])
        await gen.swap_lora(None)
        assert await reply(gen, CHATS[0]) == base
        assert gen.prefix_stats.misses == 3
    async with loaded(tiny_model_dir) as fresh:
        await fresh.swap_lora(second)
        assert await reply(fresh, CHATS[0]) == other
    assert len({base, adapted, other}) == 3


@pytest.mark.skipif(not cpu_bf16_supported(), reason="measured on CPUs with native bfloat16")
def test_bf16_batched_attention_over_right_padded_rows_is_batch_invariant() -> None:
    """What bot.engine.attention relies on: a row alone, or among rows of other lengths in a
    longer buffer, gets bit-identical attention output."""
    torch.manual_seed(0)
    heads, kv_heads, dim, rows = 9, 3, 64, 8
    lengths = [int(n) for n in torch.randint(1, 300, (rows,))]
    query = torch.randn(rows, heads, 1, dim).to(torch.bfloat16)
    keys = torch.randn(rows, kv_heads, 300, dim).to(torch.bfloat16)
    values = torch.randn(rows, kv_heads, 300, dim).to(torch.bfloat16)

    def attend(index: list[int], span: int) -> torch.Tensor:
        k = torch.zeros(len(index), kv_heads, span, dim, dtype=torch.bfloat16)
        v = torch.zeros_like(k)
        for row, i in enumerate(index):
            k[row, :, : lengths[i]] = keys[i, :, : lengths[i]]
            v[row, :, : lengths[i]] = values[i, :, : lengths[i]]
        mask = torch.arange(span)[None, :] < torch.tensor([lengths[i] for i in index])[:, None]
        return _batched(query[index], k, v, mask[:, None, None, :], dim**-0.5)

    together = attend(list(range(rows)), 300)
    for i in range(rows):
        assert torch.equal(attend([i], lengths[i])[0], together[i])


async def test_bf16_batches_match_solo_across_cache_growth(tiny_model_dir: Path) -> None:
    """bfloat16 exact batching (batched SDPA, a filler row alone) on rows that outgrow the
    first cache block while others join and leave."""
    params = GenerationParams(max_new_tokens=BLOCK + 20, temperature=0.0, repetition_penalty=1.0)
    async with loaded(tiny_model_dir, dtype="bfloat16") as gen:
        solo = [await reply(gen, turns, params) for turns in PROMPTS]

        async def staggered() -> list[str]:
            tasks = []
            for turns in PROMPTS:
                tasks.append(asyncio.create_task(reply(gen, turns, params)))
                await asyncio.sleep(0.05)
            return list(await asyncio.gather(*tasks))

        assert await staggered() == solo
        assert gen.stats.max_batch > 1


def test_row_cache_keeps_each_rows_tokens_at_the_front() -> None:
    def prefill(length: int, value: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        k = torch.full((1, 2, length, 4), value)
        return [(k, k.clone())]

    cache = RowCache.from_prefill(prefill(3, 1.0), 3).append(
        RowCache.from_prefill(prefill(BLOCK, 2.0), BLOCK)
    )
    assert cache.keys[0].shape == (2, 2, 2 * BLOCK, 4)
    mask = cache.step_mask()
    assert mask.shape == (2, 1, 1, BLOCK + 1)
    assert mask[0, 0, 0].tolist() == [True] * 4 + [False] * (BLOCK - 3)
    keys, _ = cache.update(torch.full((2, 2, 1, 4), 9.0), torch.zeros(2, 2, 1, 4), 0)
    assert keys[0, 0, 3, 0] == 9.0 and keys[1, 0, BLOCK, 0] == 9.0
    cache.advance()
    assert cache.lengths.tolist() == [4, BLOCK + 1]
    short = cache.select([0])
    assert short.keys[0].shape == (1, 2, BLOCK, 4) and short.lengths.tolist() == [4]
