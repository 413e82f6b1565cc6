"""The llama.cpp engine under swaps, misconfiguration and failures: slots name what requests
get, emptied slots free their context, broken adapters and contexts fail clearly, kept
prefixes stay unless evicting helps, and one failure never takes more than its rows down."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import llama_cpp
import pytest
from transformers import AutoTokenizer

from bot.errors import GenerationError, LoraError, ModelLoadError
from bot.ggml import convert, engine, llama, rows, sampling
from bot.ggml import generator as generator_module
from bot.ggml.generator import LlamaCppGenerator
from bot.ggml.llama import ContextShape
from bot.ggml.rows import Lane, Prefix, Request, Row
from bot.ggml.text import ChatText, Prompt
from bot.settings import LoraSettings, Settings
from bot.types import GenerationParams, Turn
from tests.ggml.helpers import loaded, make_adapter, tiny_settings
from tests.support.generation import (
    GREEDY,
    HELLO,
    eventually,
    reply,
    slot_lora_is_what_serves_the_next_stream,
)


def slow_decoding(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.01) -> None:
    """Each llama_decode takes a little longer, so queues form."""
    decode = llama.Context.decode

    def slow(self: llama.Context, batch: llama.Batch) -> None:
        time.sleep(seconds)
        decode(self, batch)

    monkeypatch.setattr(llama.Context, "decode", slow)


async def test_slot_lora_names_the_adapter_of_the_next_stream_under_load(
    tiny_model_dir: Path, cache_dir: Path, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swap sent while requests wait for a row: whatever slot_lora says just before a
    stream starts (what the chat service records) is what that stream is served with."""
    async with loaded(tiny_model_dir, cache_dir, max_batch_size=1) as gen:
        base = await reply(gen, HELLO)
        await gen.swap_lora(adapter_dir)
        tuned = await reply(gen, HELLO)
        await gen.swap_lora(None)
        slow_decoding(monkeypatch, 0.02)
        await slot_lora_is_what_serves_the_next_stream(
            gen, adapter_dir, base=base, tuned=tuned, busy_tokens=200
        )


async def test_ending_an_ab_test_frees_the_candidate_context(
    generator: LlamaCppGenerator, adapter_dir: Path, tmp_path: Path
) -> None:
    other = make_adapter(generator.model_dir, tmp_path / "other", seed=2)
    await generator.swap_lora(adapter_dir)
    await generator.swap_lora(other, slot="candidate")
    await eventually(lambda: generator.stats.lanes == 2)
    await generator.swap_lora(None, slot="candidate")  # the test ends
    await reply(generator, HELLO)
    await eventually(lambda: generator.stats.lanes == 1)  # only the default's adapter
    assert generator.slot_lora("candidate") is None
    base = await reply(generator, HELLO, slot="candidate")  # an empty slot: the base model
    await generator.swap_lora(None)
    assert await reply(generator, HELLO) == base
    await eventually(lambda: generator.stats.lanes == 1)


async def test_a_truncated_adapter_is_a_lora_error_and_the_old_one_serves(
    generator: LlamaCppGenerator, adapter_dir: Path, tmp_path: Path
) -> None:
    await generator.swap_lora(adapter_dir)
    tuned = await reply(generator, HELLO)
    bad = tmp_path / "truncated"
    shutil.copytree(adapter_dir, bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4000])
    with pytest.raises(LoraError, match="truncated"):
        await generator.swap_lora(bad)
    assert generator.active_lora == adapter_dir
    assert await reply(generator, HELLO) == tuned


async def test_any_conversion_failure_is_a_lora_error(
    generator: LlamaCppGenerator, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Path:
        raise ValueError("cannot reshape array of size 3 into shape (4,)")

    monkeypatch.setattr(convert, "lora_gguf", broken)
    with pytest.raises(LoraError, match="cannot convert the adapter"):
        await generator.swap_lora(adapter_dir)
    assert generator.active_lora is None


async def test_a_context_that_cannot_be_made_fails_at_load(
    tiny_model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    too_many = tiny_settings(tiny_model_dir, cache_dir, max_batch_size=300)
    with pytest.raises(ModelLoadError, match="max_batch_size"):
        await generator_module.LlamaCppGenerator.load(too_many, LoraSettings())
    freed: list[bool] = []
    free = llama.Model.free

    def counted(self: llama.Model) -> None:
        freed.append(True)
        free(self)

    monkeypatch.setattr(llama.Model, "free", counted)
    monkeypatch.setattr(llama_cpp, "llama_init_from_model", lambda *a: None)
    with pytest.raises(ModelLoadError, match=r"cannot create a llama\.cpp context"):
        await generator_module.LlamaCppGenerator.load(
            tiny_settings(tiny_model_dir, cache_dir), LoraSettings()
        )
    assert freed == [True]


async def test_the_context_window_is_what_one_context_holds(
    tiny_model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model trained on a longer window than the KV cache: history is trimmed to the cache
    (fit_prompt uses context_window) instead of every long chat failing."""

    class LongWindow(llama.Model):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.n_ctx_train = 4096

    monkeypatch.setattr(generator_module, "Model", LongWindow)
    async with loaded(tiny_model_dir, cache_dir, kv_cache_tokens=256) as gen:
        capacity = gen._engine._lanes[None].context.capacity
        assert gen.context_window == min(4096, capacity) < 4096
        long = GenerationParams(max_new_tokens=200, temperature=0.0)
        assert await reply(gen, [Turn("user", "whale " * 150)], long)


def fake_lane(capacity: int, max_rows: int = 4) -> Lane:
    context = SimpleNamespace(capacity=capacity, forget=lambda seq: None)
    shape = ContextShape(kv_tokens=capacity, max_rows=max_rows, batch_tokens=8, threads=1)
    return Lane(context, None, shape)  # type: ignore[arg-type]


def test_kept_prefixes_stay_when_evicting_would_not_make_room() -> None:
    lane = fake_lane(100)
    ids = tuple(range(30))
    lane.prefixes[ids] = Prefix(ids, seq_id=9)
    lane.reserved = 30 + 60  # the prefix, and a running row's 60 cells
    assert not lane.fits(Prompt(list(range(100, 120))), limit=50)  # 10 + 30 free is too few
    assert ids in lane.prefixes  # still kept: the request waits either way
    assert lane.fits(Prompt(list(range(100, 120))), limit=40)  # evicting it makes room
    assert not lane.prefixes and lane.room() == 40


def test_a_row_that_cannot_be_made_gives_its_seq_id_back(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    def refuse(params: GenerationParams) -> None:
        raise ValueError("bad sampling parameters")

    monkeypatch.setattr(rows, "Sampler", refuse)  # as the rows module has it
    lane = fake_lane(1000, max_rows=2)
    request = Request(lambda: Prompt([1, 2]), GREEDY, lambda item: None)
    for _ in range(3):
        with pytest.raises(ValueError, match="bad sampling"):
            lane.open(request, Prompt([1, 2]), 10, ChatText.load(tiny_model_dir).decoder())
    assert sorted(lane._free_ids) == [0, 1] and lane.reserved == 0


def test_the_end_of_a_reply_flushes_held_back_text(tiny_model_dir: Path) -> None:
    """A reply cut (max_new_tokens) in the middle of a character still sends what it held,
    as the torch engine does (U+FFFD for the incomplete character)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer.encode("ab 日本", add_special_tokens=False)
    got: list[str | BaseException | None] = []
    request = Request(lambda: Prompt([1]), GREEDY, got.append)
    row = Row(request, [1], 100, 0, ChatText.load(tiny_model_dir).decoder())
    for token in ids[:-1]:  # the last byte of 本 never comes
        row.advance(token, frozenset())
    row.finish()
    assert got[-1] is None
    text = "".join(item for item in got if isinstance(item, str))
    assert text.startswith("ab 日") and text.endswith("\ufffd")


def test_streaming_never_waits_for_the_template_lock(tiny_model_dir: Path) -> None:
    """count_tokens renders templates under the tokenizer's lock; the engine thread's
    per-token decoding has its own tokenizer."""
    text = ChatText.load(tiny_model_dir)
    stream = text.decoder()
    done = threading.Event()
    with text._lock:  # a long template rendering on another thread

        def decode() -> None:
            stream.push(100)
            done.set()

        worker = threading.Thread(target=decode)
        worker.start()
        assert done.wait(5)
    worker.join()


async def test_an_unexpected_engine_error_fails_only_that_step(
    generator: LlamaCppGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = engine.LlamaEngine._note
    calls = {"n": 0}

    def flaky(self: engine.LlamaEngine) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug in the schedule")
        note(self)

    monkeypatch.setattr(engine.LlamaEngine, "_note", flaky)
    with pytest.raises(GenerationError, match="a bug in the schedule"):
        await reply(generator, HELLO)
    assert generator._engine.alive
    assert await reply(generator, HELLO)


async def test_a_row_that_fails_to_sample_fails_alone(
    generator: LlamaCppGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = await reply(generator, HELLO)
    sample = sampling.Sampler.sample

    def fragile(self: Any, logits: Any, seen: Any) -> int:
        if self.params.seed == 13:
            raise FloatingPointError("NaN logits")
        return sample(self, logits, seen)

    monkeypatch.setattr(sampling.Sampler, "sample", fragile)
    doomed = GenerationParams(max_new_tokens=24, temperature=0.0, seed=13)
    results = await asyncio.gather(
        reply(generator, HELLO), reply(generator, HELLO, doomed), return_exceptions=True
    )
    assert results[0] == alone
    assert isinstance(results[1], GenerationError)


@pytest.mark.parametrize("name", ["generation_config.json", "config.json"])
async def test_a_malformed_model_config_is_a_model_load_error(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / name).write_text("{not json", encoding="utf-8")
    if name == "config.json":
        (broken / "generation_config.json").unlink()  # stop ids then come from config.json
    with pytest.raises(ModelLoadError, match=name):
        ChatText.load(broken)
    settings = tiny_settings(broken, tmp_path / "cache")
    with pytest.raises(ModelLoadError, match=name):
        await LlamaCppGenerator.load(settings, LoraSettings())


def test_auto_picks_transformers_for_a_model_llama_cpp_cannot_convert(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bot import startup

    assert startup.local_engine("auto", "cpu", tiny_model_dir) == "llama.cpp"
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gpt2"}', encoding="utf-8")
    with caplog.at_level("INFO", logger="bot.startup"):
        assert startup.local_engine("auto", "cpu", other) == "transformers"
    assert "model_type 'gpt2'" in caplog.text
    assert startup.local_engine("llama.cpp", "cpu", other) == "llama.cpp"  # asked for: its error


async def test_startup_with_auto_serves_a_llama_with_llama_cpp_on_a_cpu(
    settings: Settings, tiny_model_dir: Path, cache_dir: Path
) -> None:
    from bot.startup import load_generator

    model = tiny_settings(tiny_model_dir, cache_dir, engine="auto", device="cpu")
    gen, model_dir = await load_generator(settings.model_copy(update={"model": model}))
    try:
        assert isinstance(gen, LlamaCppGenerator) and model_dir == tiny_model_dir
    finally:
        await gen.aclose()
