"""The serving bench's GGUF formats, made from the shipped file (bench/serving_gguf.py)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from bench.serving_gguf import weights

Q = gguf.GGMLQuantizationType


def _shipped(path: Path) -> np.ndarray:
    """A small Q4_1 GGUF like the shipped one: a quantized matrix, a float norm, metadata."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((4, 64)).astype(np.float32)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_1))
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("blk.0.w", gguf.quants.quantize(matrix, Q.Q4_1), raw_dtype=Q.Q4_1)
    writer.add_tensor("norm", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    source = gguf.GGUFReader(path).tensors[0]
    return gguf.quants.dequantize(np.asarray(source.data), Q.Q4_1)


@pytest.mark.parametrize(("fmt", "tolerance"), [("BF16", 0.02), ("Q8_0", 0.05)])
def test_a_format_is_made_once_from_the_shipped_file(
    tmp_path: Path, fmt: str, tolerance: float
) -> None:
    source = tmp_path / "model.Q4_1.gguf"
    values = _shipped(source)
    made = weights(source, tmp_path / "cache", fmt)
    reader = gguf.GGUFReader(made)
    tensors = {t.name: t for t in reader.tensors}
    assert Q(tensors["blk.0.w"].tensor_type) is Q.__members__[fmt]
    assert Q(tensors["norm"].tensor_type) is Q.F32
    again = gguf.quants.dequantize(np.asarray(tensors["blk.0.w"].data), Q.__members__[fmt])
    assert np.allclose(again, values, atol=tolerance * np.abs(values).max())
    fields = reader.fields
    assert fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE].contents() == "{{ messages }}"
    assert fields[gguf.Keys.General.FILE_TYPE].contents() != int(gguf.LlamaFileType.MOSTLY_Q4_1)
    stamp = made.stat().st_mtime_ns
    assert weights(source, tmp_path / "cache", fmt).stat().st_mtime_ns == stamp  # reused


def test_the_shipped_format_is_the_file_itself_and_others_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    assert weights(source, tmp_path, "Q4_1") == source
    with pytest.raises(ValueError, match="unknown GGUF format 'F16'"):
        weights(source, tmp_path, "F16")
