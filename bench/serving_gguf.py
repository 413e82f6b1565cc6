"""The GGUF weights llama-server is measured with: the shipped Q4_1 file, and BF16 / Q8_0 made
from it with the ``gguf`` package (a selftune dependency).

llama.cpp's own converter needs ``sentencepiece`` for a llama-architecture model even when the
model has none, so the formats are made from the shipped file instead: every quantized tensor
is dequantized and quantized again to the target type (the metadata, tokenizer and chat
template copied as they are). The default model's transformers weights are that same Q4_1 file
dequantized, so BF16 here holds the numbers the local engine computes with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

FORMATS = ("Q4_1", "Q8_0", "BF16")
_FILE_TYPE = {"Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "BF16": gguf.LlamaFileType.MOSTLY_BF16}


def weights(source: Path, cache: Path, fmt: str) -> Path:
    """The GGUF file of ``source`` in ``fmt`` (one of FORMATS), made once into ``cache``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown GGUF format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "Q4_1":
        return source
    target = cache / f"{source.stem}-{fmt}.gguf"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        requantize(source, partial, fmt)
        partial.replace(target)  # complete, then publish: a killed run leaves no half file
    return target


def requantize(source: Path, target: Path, fmt: str) -> None:
    """Write ``source`` to ``target`` with every quantized (2-D) tensor stored as ``fmt``."""
    reader = gguf.GGUFReader(source)
    qtype = gguf.GGMLQuantizationType[fmt]
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer = gguf.GGUFWriter(target, arch)
    _copy_metadata(reader, writer, fmt)
    for tensor in reader.tensors:
        data, raw_dtype = _converted(tensor, qtype)
        writer.add_tensor(tensor.name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, fmt: str) -> None:
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(_FILE_TYPE[fmt])
        writer.add_key_value(field.name, value, kind, sub_type=sub)


def _converted(tensor: Any, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray[Any, Any], Any]:
    """(data, raw_dtype) of ``tensor`` in ``qtype``; float tensors (norms) stay as they are."""
    kind = gguf.GGMLQuantizationType(tensor.tensor_type)
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(tensor.data), None
    values = gguf.quants.dequantize(np.asarray(tensor.data), kind).astype(np.float32)
    return gguf.quants.quantize(values, qtype), qtype
