"""The packed bfloat16 path (bot/engine/packed.py): what every CPU deployment serves with.

The tiny model runs in float32 elsewhere in the suite, so nothing else reaches these layers.
Packing is an optimisation only: every test checks it changes no bit of the output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from bot.engine.lora import wrap_lora
from bot.engine.packed import _PackedForward, pack_linears, packing_supported
from bot.settings import LoraSettings
from tests.engine.test_generator import loaded, make_adapter
from tests.support.generation import HELLO, PROMPTS, reply

CPU = torch.device("cpu")


def bf16_model(model_dir: Path) -> Any:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    return wrap_lora(model, LoraSettings()).eval()


@pytest.fixture
def supported(tiny_model_dir: Path) -> None:
    if not packing_supported(bf16_model(tiny_model_dir), CPU):
        pytest.skip("this torch has no oneDNN bf16 linear packing")


def packed_modules(model: Any) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and isinstance(module.forward, _PackedForward)
    ]


def test_packing_is_refused_where_it_was_not_measured(tiny_model_dir: Path) -> None:
    float32 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert not packing_supported(float32, CPU)
    assert not packing_supported(bf16_model(tiny_model_dir), torch.device("meta"))


@pytest.mark.usefixtures("supported")
def test_every_base_linear_is_packed_and_no_lora_matrix(tiny_model_dir: Path) -> None:
    model = bf16_model(tiny_model_dir)
    count = pack_linears(model)
    names = packed_modules(model)
    assert count == len(names) > 0
    assert not [n for n in names if "lora_" in n]
    # Every projection of every layer, and the head: 2 layers x 7 + lm_head.
    assert len([n for n in names if "layers." in n]) == 14


@pytest.mark.usefixtures("supported")
def test_packed_logits_are_bit_identical(tiny_model_dir: Path) -> None:
    plain, packed = bf16_model(tiny_model_dir), bf16_model(tiny_model_dir)
    pack_linears(packed)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250], [7, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, packed(ids).logits)


@pytest.mark.usefixtures("supported")
async def test_packed_generator_replies_like_the_unpacked_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Greedy replies alone, in a batch and with a LoRA swapped in: the same text."""
    adapter = make_adapter(tiny_model_dir, tmp_path / "lora", LoraSettings())
    texts: dict[bool, list[str]] = {}
    for pack in (False, True):
        async with loaded(tiny_model_dir, dtype="bfloat16", pack_weights=pack) as gen:
            assert gen.dtype is torch.bfloat16
            assert bool(packed_modules(gen._model)) is pack
            solo = await reply(gen, HELLO)
            batch = await asyncio.gather(*(reply(gen, turns) for turns in PROMPTS))
            await gen.swap_lora(adapter)
            adapted = await reply(gen, HELLO)
            texts[pack] = [solo, *batch, adapted]
    assert texts[True] == texts[False]
    assert texts[True][0] != texts[True][-1]  # the LoRA did change the reply
