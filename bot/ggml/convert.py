"""Transformers llama models and their PEFT LoRA adapters as llama.cpp GGUF files (no torch).

What llama.cpp's ``convert_hf_to_gguf.py`` (class ``LlamaModel``) and
``convert_lora_to_gguf.py`` do for a llama, with ``gguf``'s writer and numpy:

- the hyperparameters as ``llama.*`` keys; tensor names from ``gguf.TensorNameMap``;
- the rows of ``q_proj`` and ``k_proj`` permuted (llama.cpp's RoPE pairs neighbouring values,
  transformers' pairs the two halves of a head), and a LoRA's ``B`` of those modules likewise:
  ``B @ A`` then equals the permuted update;
- tied embeddings: no ``output.weight`` (llama.cpp falls back to ``token_embd.weight``);
- a LoRA's ``adapter.lora.alpha`` chosen so that llama.cpp's ``alpha / r`` is PEFT's scaling.

The model's vocabulary is a placeholder (``tokenizer.ggml.model = "none"``): the engine
tokenizes with the transformers tokenizer and feeds llama.cpp token ids.

Weights are read one tensor at a time straight from the safetensors files (numpy has no
bfloat16, so the bytes are read and widened by hand) and written one at a time: memory stays
at about the largest tensor.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import numpy.typing as npt

from bot.errors import LoraError, ModelLoadError

Dtype = Literal["bf16", "f32", "q8_0"]
Array = npt.NDArray[Any]
Q = gguf.GGMLQuantizationType

ARCH = gguf.MODEL_ARCH.LLAMA
_QTYPES: dict[str, Q] = {"f32": Q.F32, "bf16": Q.BF16, "q8_0": Q.Q8_0}
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# safetensors dtypes numpy can read (bfloat16 as its raw 16 bits), all little-endian.
_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PEFT_PREFIX = "base_model.model."


def model_gguf(model_dir: Path, out: Path, *, dtype: Dtype = "bf16") -> Path:
    """A llama.cpp GGUF of the transformers (llama-architecture) model in model_dir (its
    safetensors + config.json), written once to `out` (atomically: temp file then rename; skipped
    when `out` exists and is newer than the weights). Token ids only: its vocabulary is a
    placeholder (tokenizer.ggml.model = "none"), because the engine tokenizes and detokenizes
    with the transformers tokenizer and chat template. Raises :class:`ModelLoadError`."""
    if dtype not in _QTYPES:
        raise ModelLoadError(f"GGUF dtype {dtype!r} is not one of {sorted(_QTYPES)}")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} has no safetensors weights to convert to GGUF")
    if _fresh(out, [*files, model_dir / "config.json"]):
        return out
    llama = _llama(model_dir / "config.json", ModelLoadError)
    stored = {name: t for file in files for name, t in _header(file, ModelLoadError).items()}
    tensors = _model_tensors(stored, llama, dtype)
    meta = partial(_model_keys, llama=llama, dtype=dtype, name=model_dir.name)
    _atomic_write(out, partial(_write, meta=meta, tensors=tensors), ModelLoadError)
    return out


def lora_gguf(adapter_dir: Path, out: Path, *, base_dir: Path | None = None) -> Path:
    """A llama.cpp GGUF LoRA (general.type = "adapter", adapter.type = "lora",
    adapter.lora.alpha) of the PEFT adapter in adapter_dir (adapter_config.json +
    adapter_model.safetensors), with the same tensor names/permutations as model_gguf so that
    llama.cpp applying it reproduces PEFT's output. Atomic write; raises bot.errors.LoraError with
    a clear message for an adapter it cannot convert (wrong base shapes, unknown modules, DoRA...).

    The base model's ``config.json`` (its heads, for the permutation, and its shapes) comes from
    ``base_dir``, by default from the adapter's ``base_model_name_or_path``."""
    config_file = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not adapter_dir.is_dir():
        raise LoraError(f"adapter directory {adapter_dir} does not exist")
    config = _adapter_config(config_file)
    if not weights.is_file():
        raise LoraError(f"{adapter_dir} has no adapter_model.safetensors")
    if _fresh(out, [config_file, weights]):
        return out
    alpha = _peft_alpha(config)
    llama = _llama(_base_config(config, adapter_dir, base_dir), LoraError)
    tensors = _lora_tensors(_header(weights, LoraError), llama, int(config["r"]), adapter_dir)
    meta = partial(_lora_keys, alpha=alpha)
    _atomic_write(out, partial(_write, meta=meta, tensors=tensors), LoraError)
    return out


# --- the llama hyperparameters ---------------------------------------------------------------


@dataclass(frozen=True)
class _Llama:
    """What a llama's config.json says about its shapes (transformers' names in comments)."""

    n_layer: int  # num_hidden_layers
    n_embd: int  # hidden_size
    n_ff: int  # intermediate_size
    n_head: int  # num_attention_heads
    n_head_kv: int  # num_key_value_heads
    head_dim: int
    n_ctx: int  # max_position_embeddings
    rms_eps: float
    rope_theta: float
    n_vocab: int
    tied: bool  # tie_word_embeddings: no separate output matrix

    def linear_shape(self, module: str) -> tuple[int, int]:
        """(out_features, in_features) of one of a block's linear layers."""
        q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        return {
            "q_proj": (q, self.n_embd),
            "k_proj": (kv, self.n_embd),
            "v_proj": (kv, self.n_embd),
            "o_proj": (self.n_embd, q),
            "gate_proj": (self.n_ff, self.n_embd),
            "up_proj": (self.n_ff, self.n_embd),
            "down_proj": (self.n_embd, self.n_ff),
        }[module]

    def heads(self, hf_name: str) -> int | None:
        """How many heads to permute the rows of ``hf_name`` by (None: not Q or K)."""
        if ".q_proj." in hf_name:
            return self.n_head
        if ".k_proj." in hf_name:
            return self.n_head_kv
        return None


def unsupported(model_dir: Path) -> str | None:
    """Why :func:`model_gguf` cannot convert the model in ``model_dir`` (None: it can)."""
    try:
        _llama(model_dir / "config.json", ModelLoadError)
    except ModelLoadError as exc:
        return str(exc)
    return None


def _llama(config_file: Path, error: type[ModelLoadError]) -> _Llama:
    """The hyperparameters of a transformers llama's config.json; ``error`` if it is none."""
    config = _json_object(config_file, error)
    if config.get("model_type") != "llama":
        raise error(
            f"{config_file}: model_type {config.get('model_type')!r} is not 'llama'; "
            "llama.cpp conversion supports llama-architecture models only"
        )
    _check_rope(config, config_file, error)
    try:
        n_head = int(config["num_attention_heads"])
        return _Llama(
            n_layer=int(config["num_hidden_layers"]),
            n_embd=int(config["hidden_size"]),
            n_ff=int(config["intermediate_size"]),
            n_head=n_head,
            n_head_kv=int(config.get("num_key_value_heads") or n_head),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // n_head),
            n_ctx=int(config.get("max_position_embeddings", 2048)),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(_rope(config).get("rope_theta", config.get("rope_theta", 10000.0))),
            n_vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as exc:
        raise error(f"{config_file} lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise error(f"{config_file} holds a malformed value: {exc}") from None


def _rope(config: Mapping[str, Any]) -> Mapping[str, Any]:
    # transformers 5 writes rope_parameters; earlier versions rope_theta and rope_scaling.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return rope if isinstance(rope, Mapping) else {}


def _check_rope(config: Mapping[str, Any], where: Path, error: type[ModelLoadError]) -> None:
    rope = _rope(config)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise error(f"{where}: RoPE scaling {kind!r} is not supported by this conversion")


def _model_keys(writer: gguf.GGUFWriter, *, llama: _Llama, dtype: Dtype, name: str) -> None:
    """The keys convert_hf_to_gguf.py writes for a llama, and a placeholder vocabulary."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(llama.n_layer)
    writer.add_context_length(llama.n_ctx)
    writer.add_embedding_length(llama.n_embd)
    writer.add_feed_forward_length(llama.n_ff)
    writer.add_head_count(llama.n_head)
    writer.add_head_count_kv(llama.n_head_kv)
    writer.add_key_length(llama.head_dim)
    writer.add_value_length(llama.head_dim)
    writer.add_rope_dimension_count(llama.head_dim)
    writer.add_rope_freq_base(llama.rope_theta)
    writer.add_layer_norm_rms_eps(llama.rms_eps)
    writer.add_vocab_size(llama.n_vocab)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # llama.cpp makes n_vocab dummy tokens: ids in, logits out, no text.
    writer.add_tokenizer_model("none")


# --- reading safetensors ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    """Where one tensor's bytes sit in a safetensors file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int

    def load(self) -> Array:
        """The tensor as float32 (bfloat16 widened: its bits are a float32's upper half)."""
        raw = np.fromfile(
            self.file,
            dtype=_SAFETENSORS_DTYPES[self.dtype],
            count=math.prod(self.shape),
            offset=self.offset,
        )
        if self.dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False).reshape(self.shape)

    @property
    def end(self) -> int:
        """The byte just past its data."""
        return self.offset + math.prod(self.shape) * _SAFETENSORS_DTYPES[self.dtype].itemsize


def _header(file: Path, error: type[ModelLoadError]) -> dict[str, _Stored]:
    """The tensors of a safetensors file (its JSON header: dtype, shape, byte offsets)."""
    try:
        with file.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        tensors = {
            name: _Stored(
                file, info["dtype"], tuple(info["shape"]), 8 + size + info["data_offsets"][0]
            )
            for name, info in header.items()
            if name != "__metadata__"
        }
        length = file.stat().st_size
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise error(f"cannot read {file} as safetensors: {exc!r}") from None
    for name, tensor in tensors.items():
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise error(f"{file}: {name} is {tensor.dtype}; only F32, F16 and BF16 convert")
        if tensor.end > length:  # a copy cut short: its data is not all there
            raise error(f"{file} is truncated: {name} ends at byte {tensor.end} of {length}")
    return tensors


# --- tensors to write ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """One GGUF tensor to write: its name, numpy shape, type, and how to make its data."""

    name: str
    shape: tuple[int, ...]
    qtype: Q
    data: Callable[[], Array]  # float32, in GGUF layout

    @property
    def nbytes(self) -> int:
        """Bytes it takes in the file."""
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size

    def encoded(self) -> Array:
        """The data in the file's type (float32, bfloat16 bits or Q8_0 blocks)."""
        encoded: Array = gguf.quants.quantize(self.data(), self.qtype)
        return encoded


def _permute(weights: Array, n_head: int | None) -> Array:
    """convert_hf_to_gguf.py's ``LlamaModel.permute``: each head's rows from transformers' two
    halves to llama.cpp's interleaved pairs (the RoPE layouts differ)."""
    if n_head is None:
        return weights
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _qtype(shape: tuple[int, ...], dtype: Dtype) -> Q:
    # As convert_hf_to_gguf.py: vectors (norms, biases) stay float32; Q8_0 needs rows made of
    # whole 32-value blocks (else float16, its fallback).
    if len(shape) < 2:
        return Q.F32
    qtype = _QTYPES[dtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else Q.F16


def _model_tensors(stored: Mapping[str, _Stored], llama: _Llama, dtype: Dtype) -> list[_Tensor]:
    names = gguf.get_tensor_name_map(ARCH, llama.n_layer)
    tensors = []
    for hf_name, item in stored.items():
        if hf_name.endswith(".rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and llama.tied):
            continue  # computed by llama.cpp / the embedding matrix itself
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelLoadError(f"{item.file}: tensor {hf_name} has no llama.cpp counterpart")
        load = partial(_permuted, item, llama.heads(hf_name))
        tensors.append(_Tensor(name, item.shape, _qtype(item.shape, dtype), load))
    return tensors


def _permuted(item: _Stored, n_head: int | None) -> Array:
    return _permute(item.load(), n_head)


# --- PEFT adapters ---------------------------------------------------------------------------


def _adapter_config(file: Path) -> dict[str, Any]:
    """adapter_config.json, refused unless llama.cpp can apply it as PEFT does."""
    if not file.is_file():
        raise LoraError(f"{file.parent} has no adapter_config.json; it is not a PEFT adapter")
    config = _json_object(file, LoraError)
    problems = [
        problem for check in (_check_kind, _check_rank, _check_targets) for problem in check(config)
    ]
    if problems:
        raise LoraError(
            f"cannot convert the adapter {file.parent} for llama.cpp: {'; '.join(problems)}"
        )
    return config


def _check_kind(config: Mapping[str, Any]) -> Iterable[str]:
    if config.get("peft_type") != "LORA":
        yield f"peft_type is {config.get('peft_type')!r}, not 'LORA'"
    refused = {
        "use_dora": "DoRA (use_dora) has no llama.cpp equivalent",
        "fan_in_fan_out": "fan_in_fan_out is for GPT-2 style Conv1D layers, a llama has none",
        "modules_to_save": f"modules_to_save {config.get('modules_to_save')!r} are full copies",
        "lora_bias": "LoRA biases (lora_bias) are not applied by llama.cpp",
        "rank_pattern": "per-module ranks (rank_pattern) need one alpha each",
        "alpha_pattern": "per-module alphas (alpha_pattern) need one alpha each",
        "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
    }
    yield from (why for key, why in refused.items() if config.get(key))
    if config.get("bias", "none") != "none":
        yield f"bias {config.get('bias')!r}: trained biases are not applied by llama.cpp"


def _check_rank(config: Mapping[str, Any]) -> Iterable[str]:
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        yield f"r {rank!r} is not a positive integer"
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        yield f"lora_alpha {alpha!r} is not a positive number"


def _check_targets(config: Mapping[str, Any]) -> Iterable[str]:
    targets = config.get("target_modules")
    if isinstance(targets, list) and not set(targets) <= set(LINEAR):
        odd = sorted(set(map(str, targets)) - set(LINEAR))
        yield f"target_modules {odd} are not a llama block's linear layers {list(LINEAR)}"


def _peft_alpha(config: Mapping[str, Any]) -> float:
    """The alpha whose ``alpha / r`` (llama.cpp's scale) is PEFT's scaling: ``lora_alpha / r``,
    or ``lora_alpha / sqrt(r)`` with rsLoRA."""
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _base_config(config: Mapping[str, Any], adapter_dir: Path, base_dir: Path | None) -> Path:
    base = base_dir or Path(str(config.get("base_model_name_or_path") or "")).expanduser()
    found = base / "config.json"
    if not str(base) or not found.is_file():
        raise LoraError(
            f"cannot convert the adapter {adapter_dir}: its base model's config.json is not "
            f"at {found} (base_model_name_or_path); pass the base model's directory"
        )
    return found


def _lora_tensors(
    stored: Mapping[str, _Stored], llama: _Llama, rank: int, adapter_dir: Path
) -> list[_Tensor]:
    """``X.lora_a`` (r, in) and ``X.lora_b`` (out, r) per adapted linear ``X`` of the base."""
    names = gguf.get_tensor_name_map(ARCH, llama.n_layer)
    pairs = _lora_pairs(stored, adapter_dir)
    tensors = []
    for base_name, (a, b) in sorted(pairs.items()):
        name = names.get_name(base_name, try_suffixes=(".weight",))
        module = base_name.rsplit(".", 2)[-2]
        if name is None or module not in LINEAR:
            raise LoraError(f"adapter {adapter_dir}: {base_name} is not a linear layer of the base")
        _check_pair(base_name, a, b, llama.linear_shape(module), rank, adapter_dir)
        tensors.append(_Tensor(f"{name}.lora_a", a.shape, Q.F32, a.load))
        load_b = partial(_permuted, b, llama.heads(base_name))
        tensors.append(_Tensor(f"{name}.lora_b", b.shape, Q.F32, load_b))
    if not tensors:
        raise LoraError(f"adapter {adapter_dir} holds no LoRA weights")
    return tensors


def _lora_pairs(
    stored: Mapping[str, _Stored], adapter_dir: Path
) -> dict[str, tuple[_Stored, _Stored]]:
    """PEFT's ``base_model.model.M.lora_A.weight`` / ``lora_B`` by the base name ``M.weight``."""
    halves: dict[str, dict[str, _Stored]] = {}
    for key, item in stored.items():
        name = key.removeprefix(_PEFT_PREFIX)
        for half in ("A", "B"):
            if name.endswith(f".lora_{half}.weight"):
                base = name.removesuffix(f".lora_{half}.weight") + ".weight"
                halves.setdefault(base, {})[half] = item
                break
        else:
            raise LoraError(f"adapter {adapter_dir}: tensor {key} is not a LoRA A or B matrix")
    pairs = {}
    for base, found in halves.items():
        if set(found) != {"A", "B"}:
            raise LoraError(f"adapter {adapter_dir}: {base} lacks its other LoRA matrix")
        pairs[base] = (found["A"], found["B"])
    return pairs


def _check_pair(
    base: str, a: _Stored, b: _Stored, shape: tuple[int, int], rank: int, adapter_dir: Path
) -> None:
    out_features, in_features = shape
    if a.shape != (rank, in_features) or b.shape != (out_features, rank):
        raise LoraError(
            f"adapter {adapter_dir}: {base} has A {a.shape} and B {b.shape}, the base model "
            f"needs ({rank}, {in_features}) and ({out_features}, {rank}) "
            "(trained for another base model?)"
        )


def _lora_keys(writer: gguf.GGUFWriter, *, alpha: float) -> None:
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)


# --- writing ---------------------------------------------------------------------------------


def _write(path: Path, *, meta: Callable[[gguf.GGUFWriter], None], tensors: list[_Tensor]) -> None:
    """A GGUF file at ``path``: every key and tensor description first, then the tensors'
    data one at a time (only one converted tensor is in memory at once)."""
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCH])
    try:
        meta(writer)
        for tensor in tensors:
            writer.add_tensor_info(
                tensor.name,
                tensor.shape,
                np.dtype(np.float32),
                tensor.nbytes,
                raw_dtype=tensor.qtype,
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors:
            writer.write_tensor_data(tensor.encoded())
    finally:
        writer.close()


def _atomic_write(out: Path, write: Callable[[Path], None], error: type[ModelLoadError]) -> None:
    """``write`` to a temp file beside ``out``, renamed to it when complete."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise error(f"cannot write {out}: {exc}") from None
    os.close(handle)
    temp = Path(name)
    try:
        write(temp)
        temp.chmod(0o644)  # mkstemp makes it private; the cache is shared like any other
        os.replace(temp, out)
    except OSError as exc:
        raise error(f"cannot write {out}: {exc}") from None
    except ValueError as exc:  # a source that changed or is malformed under us
        raise error(f"cannot convert to {out}: {exc}") from None
    finally:
        temp.unlink(missing_ok=True)


def _fresh(out: Path, sources: Iterable[Path]) -> bool:
    """``out`` exists and is at least as new as every source: nothing to redo."""
    try:
        written = out.stat().st_mtime_ns
        return all(source.stat().st_mtime_ns <= written for source in sources)
    except OSError:
        return False


def _json_object(file: Path, error: type[ModelLoadError]) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{file} does not exist") from None
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {file}: {exc}") from None
    if not isinstance(value, dict):
        raise error(f"{file} is not a JSON object")
    return value
