"""model_gguf and lora_gguf: llama.cpp, given the converted files, computes the logits that
transformers and PEFT compute from the originals."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
import numpy.typing as npt
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.errors import LoraError, ModelLoadError
from bot.generation.source import resolve_model
from bot.generation.template import chat_ids
from bot.ggml.convert import Dtype, lora_gguf, model_gguf
from bot.settings import ModelSettings
from tests.support.tiny_gguf import TinyGguf, build_tiny_gguf, peft_quietly, save_random_lora

Logits = npt.NDArray[np.float32]
SEQUENCES = [[5, 17, 42, 99, 250, 7, 8], [1, 300, 2, 580, 64, 64, 3, 11, 400], [33]]


class LlamaCpp:
    """A GGUF model in llama.cpp (its low-level API): logits for every token of a sequence,
    with or without a LoRA adapter."""

    def __init__(self, path: Path, n_ctx: int = 256) -> None:
        lc.llama_backend_init()
        model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        assert model, f"llama.cpp cannot load {path}"
        self.model = model
        params = lc.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = 2
        # A float32 KV cache: the default float16 one would round every key and value.
        params.type_k = params.type_v = lc.GGML_TYPE_F32
        # No flash attention: on a CPU it computes in float16 (~1e-3 relative error in logits).
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = lc.llama_init_from_model(model, params)
        assert ctx, "llama.cpp cannot make a context"
        self.ctx = ctx
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))

    def lora(self, path: Path) -> Any:
        adapter = lc.llama_adapter_lora_init(self.model, str(path).encode())
        assert adapter, f"llama.cpp cannot load the LoRA {path}"
        return adapter

    def use(self, adapter: Any | None) -> None:
        if adapter is None:
            assert lc.llama_set_adapters_lora(self.ctx, None, 0, None) == 0
            return
        adapters = (lc.llama_adapter_lora_p_ctypes * 1)(adapter)
        assert lc.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)) == 0

    def logits(self, ids: Sequence[int]) -> Logits:
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        batch = lc.llama_batch_init(len(ids), 0, 1)
        try:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.logits[i] = token, i, True
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
            batch.n_tokens = len(ids)
            assert lc.llama_decode(self.ctx, batch) == 0
            out = np.ctypeslib.as_array(
                lc.llama_get_logits(self.ctx), shape=(len(ids), self.n_vocab)
            )
            return out.copy()
        finally:
            lc.llama_batch_free(batch)

    def close(self) -> None:
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def loaded(path: Path) -> Iterator[LlamaCpp]:
    llama = LlamaCpp(path)
    try:
        yield llama
    finally:
        llama.close()


def hf_logits(model_dir: Path, adapter_dir: Path | None, ids: Sequence[int]) -> Logits:
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        with peft_quietly():
            model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        logits: Logits = model(torch.tensor([list(ids)])).logits[0].numpy()
    return logits


def relative_error(got: Logits, expected: Logits) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGguf:
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture(scope="module")
def adapters(tiny: TinyGguf, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEFT adapter dirs by name: every linear layer, q/v only, and rsLoRA (r=4)."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "all linear": tiny.adapter_dir,
        "q and v": save_random_lora(tiny.model_dir, root / "qv", targets=("q_proj", "v_proj")),
        "rslora": save_random_lora(tiny.model_dir, root / "rs", use_rslora=True, alpha=4, seed=2),
    }


@pytest.fixture(scope="module")
def expected(tiny: TinyGguf, adapters: dict[str, Path]) -> dict[str | None, list[Logits]]:
    """transformers' logits of SEQUENCES: the base model's (key None) and with each adapter."""
    found: dict[str | None, list[Logits]] = {
        None: [hf_logits(tiny.model_dir, None, ids) for ids in SEQUENCES]
    }
    for key, path in adapters.items():
        found[key] = [hf_logits(tiny.model_dir, path, ids) for ids in SEQUENCES]
    return found


# (adapter, GGUF dtype, the largest logit error allowed relative to the largest logit)
CASES = [
    ("all linear", "f32", 1e-5),
    ("all linear", "bf16", 3e-2),
    ("all linear", "q8_0", 1e-1),
    ("q and v", "f32", 1e-5),
    ("q and v", "bf16", 3e-2),
    ("rslora", "f32", 1e-5),
]


@pytest.mark.parametrize(("adapter", "dtype", "tolerance"), CASES)
def test_llama_cpp_logits_equal_transformers_with_and_without_the_lora(
    tiny: TinyGguf,
    adapters: dict[str, Path],
    expected: dict[str | None, list[Logits]],
    tmp_path: Path,
    adapter: str,
    dtype: Dtype,
    tolerance: float,
) -> None:
    gguf_model = model_gguf(tiny.model_dir, tmp_path / f"model-{dtype}.gguf", dtype=dtype)
    gguf_lora = lora_gguf(adapters[adapter], tmp_path / "lora.gguf")
    for llama in loaded(gguf_model):
        lora = llama.lora(gguf_lora)
        for ids, base, tuned in zip(SEQUENCES, expected[None], expected[adapter], strict=True):
            assert relative_error(tuned, base) > 0.05  # the adapter visibly changes the model
            llama.use(lora)
            assert relative_error(llama.logits(ids), tuned) < tolerance
            llama.use(None)
            assert relative_error(llama.logits(ids), base) < tolerance


def edited_adapter(source: Path, target: Path, **config: Any) -> Path:
    """A copy of the adapter at ``source`` with ``config`` merged into its adapter_config.json."""
    shutil.copytree(source, target)
    file = target / "adapter_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | config))
    return target


BAD_CONFIGS = [
    ({"use_dora": True}, "DoRA"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out is for GPT-2"),
    ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
    ({"target_modules": ["q_proj", "lm_head"]}, r"target_modules \['lm_head'\] are not"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias 'all'"),
    ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    ({"r": 0}, "r 0 is not a positive integer"),
    ({"lora_alpha": "big"}, "lora_alpha 'big'"),
    ({"base_model_name_or_path": "/nonexistent/model"}, "base model's config.json"),
    ({"r": 8}, r"weight has A \(4, \d+\) .* needs \(8, \d+\).*trained for another base model"),
]


@pytest.mark.parametrize(("config", "message"), BAD_CONFIGS)
def test_an_adapter_llama_cpp_cannot_apply_is_refused_clearly(
    tiny: TinyGguf, tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    adapter = edited_adapter(tiny.adapter_dir, tmp_path / "adapter", **config)
    with pytest.raises(LoraError, match=message):
        lora_gguf(adapter, tmp_path / "lora.gguf")
    assert list(tmp_path.glob("*.gguf*")) == []  # nothing half-written is left


def test_broken_adapter_dirs_are_refused_clearly(tiny: TinyGguf, tmp_path: Path) -> None:
    out = tmp_path / "lora.gguf"
    with pytest.raises(LoraError, match="does not exist"):
        lora_gguf(tmp_path / "missing", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoraError, match=r"no adapter_config.json; it is not a PEFT adapter"):
        lora_gguf(empty, out)
    (empty / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(LoraError, match="is not a JSON object"):
        lora_gguf(empty, out)
    no_weights = edited_adapter(tiny.adapter_dir, tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(LoraError, match=r"has no adapter_model.safetensors"):
        lora_gguf(no_weights, out)
    garbage = edited_adapter(tiny.adapter_dir, tmp_path / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"
    )
    with pytest.raises(LoraError, match=r"cannot read .* as safetensors"):
        lora_gguf(garbage, out)


def test_an_adapter_of_another_base_or_with_other_tensors_is_refused(
    tiny: TinyGguf, tmp_path: Path
) -> None:
    other = tmp_path / "other-base"
    other.mkdir()
    config = json.loads((tiny.model_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    with pytest.raises(LoraError, match=r"down_proj.weight has A \(4, 128\).*another base model"):
        lora_gguf(tiny.adapter_dir, tmp_path / "lora.gguf", base_dir=other)
    extra = edited_adapter(tiny.adapter_dir, tmp_path / "extra")
    weights = extra / "adapter_model.safetensors"
    tensors = load_file(weights) | {"base_model.model.lm_head.weight": torch.zeros(586, 64)}
    save_file(tensors, weights)
    with pytest.raises(LoraError, match=r"lm_head.weight is not a LoRA A or B matrix"):
        lora_gguf(extra, tmp_path / "lora.gguf")


def test_a_second_call_reuses_the_file_and_newer_weights_rewrite_it(
    tiny: TinyGguf, tmp_path: Path
) -> None:
    model_dir = shutil.copytree(tiny.model_dir, tmp_path / "model")
    adapter_dir = shutil.copytree(tiny.adapter_dir, tmp_path / "adapter")
    out = tmp_path / "out"
    for convert, weights in [
        (partial(model_gguf, model_dir, out / "m.gguf"), model_dir / "model.safetensors"),
        (
            partial(lora_gguf, adapter_dir, out / "l.gguf"),
            adapter_dir / "adapter_model.safetensors",
        ),
    ]:
        first = convert().stat()
        again = convert().stat()
        assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
        later = first.st_mtime + 10
        os.utime(weights, (later, later))
        assert convert().stat().st_ino != first.st_ino  # written anew, then renamed over it
    assert sorted(p.name for p in out.iterdir()) == ["l.gguf", "m.gguf"]  # no temp files left


def test_a_model_it_cannot_convert_is_a_load_error(tiny: TinyGguf, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny.model_dir, model)
    config = json.loads((model / "config.json").read_text())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not 'llama'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
        ({"num_hidden_layers": None}, "malformed value"),
        ({"vocab_size": "x"}, "malformed value"),
    ]
    for edit, message in cases:
        (model / "config.json").write_text(json.dumps(config | edit))
        with pytest.raises(ModelLoadError, match=message):
            model_gguf(model, tmp_path / "m.gguf")
    with pytest.raises(ModelLoadError, match="dtype 'f16' is not one of"):
        model_gguf(model, tmp_path / "m.gguf", dtype="f16")  # type: ignore[arg-type]
    (model / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        model_gguf(model, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.slow
def test_default_model_as_bf16_gguf_predicts_the_next_token_as_transformers(tmp_path: Path) -> None:
    model_dir = resolve_model(ModelSettings(), progress=False)
    started = time.perf_counter()
    path = model_gguf(model_dir, tmp_path / "smollm2.gguf")
    convert_s = time.perf_counter() - started
    assert path.stat().st_size < 300e6  # bfloat16: about 2 bytes a parameter (135M)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = chat_ids(tokenizer, messages, add_generation_prompt=True)
    reference = hf_logits(model_dir, None, ids)[-1]
    for llama in loaded(path):
        assert llama.n_vocab == reference.shape[0]
        got = llama.logits(ids)[-1]
    assert int(got.argmax()) == int(reference.argmax())
    assert relative_error(got, reference) < 5e-2
    assert convert_s < 60, f"the conversion took {convert_s:.0f}s"


def test_the_conversion_loads_neither_torch_nor_transformers() -> None:
    probe = (
        "import sys, bot.ggml.convert; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_default_model_f32_gguf_and_a_lora_equal_peft(tmp_path: Path) -> None:
    """Its 9 query heads over 3 KV heads: the Q/K permutations of the base and of LoRA B."""
    model_dir = resolve_model(ModelSettings(), progress=False)
    adapter = save_random_lora(model_dir, tmp_path / "lora", r=8, alpha=16, scale=0.02)
    ids = [1, 9690, 198, 19556, 314, 253, 1345, 47, 2, 198, 1, 520, 9531, 198]
    expected = hf_logits(model_dir, adapter, ids)
    assert relative_error(expected, hf_logits(model_dir, None, ids)) > 0.01
    for llama in loaded(model_gguf(model_dir, tmp_path / "m.gguf", dtype="f32")):
        llama.use(llama.lora(lora_gguf(adapter, tmp_path / "l.gguf")))
        got = llama.logits(ids)
    assert relative_error(got, expected) < 1e-4
