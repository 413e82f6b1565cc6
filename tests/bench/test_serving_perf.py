"""bench/serving_perf.py: perf's report summarised by library and function."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.serving_perf import Perf, summarize

REPORT = """\
# Samples: 17K of event 'cpu-clock'
#
    14.03%  libggml-cpu.so.0      [.] ggml_compute_forward_flash_attn_ext
     9.09%  libggml-cpu.so.0      [.] 0x0000000000102e77
     8.18%  libggml-cpu.so.0      [.] 0x0000000000102e7e
     3.71%  libggml-cpu.so.0      [.] ggml_vec_dot_f16
     2.62%  libgomp.so.1.0.0      [.] 0x000000000001f7da
     2.00%  [kernel.kallsyms]     [k] clear_page_erms
     1.50%  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault
"""


def test_summarize_groups_by_library_and_sums_unnamed_code() -> None:
    text = summarize(REPORT, top=3)
    libraries, functions = text.split("\n\n")
    assert libraries.splitlines() == [
        "share  library",
        " 35.0% libggml-cpu.so.0",
        "  2.6% libgomp.so.1.0.0",
        "  2.0% [kernel.kallsyms]",
    ]
    assert functions.splitlines()[1:] == [
        " 17.3% (functions without a symbol) (libggml-cpu.so.0)",
        " 14.0% ggml_compute_forward_flash_attn_ext (libggml-cpu.so.0)",
        "  3.7% ggml_vec_dot_f16 (libggml-cpu.so.0)",
    ]


def test_summarize_without_samples() -> None:
    assert summarize("# nothing\n", top=5) == "(perf found no samples)"


def test_perf_missing_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with Perf(1, tmp_path / "perf.data") as perf:
        pass
    assert "apt-get install linux-perf" in perf.table()
