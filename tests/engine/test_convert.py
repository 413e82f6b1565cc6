"""The first start shows one progress bar (the conversion's stages), not transformers' own."""

from __future__ import annotations

from transformers import modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from bot.engine.convert import _quiet_gguf_tensors, transformers_progress


def test_transformers_bars_are_off_while_converting_and_restored_after() -> None:
    original = gguf_utils.tqdm  # type: ignore[attr-defined]
    assert hf_logging.is_progress_bar_enabled()
    with transformers_progress(False), _quiet_gguf_tensors():
        assert not hf_logging.is_progress_bar_enabled()
        assert gguf_utils.tqdm(range(3)).disable  # type: ignore[attr-defined]  # its own bar
    assert hf_logging.is_progress_bar_enabled() and gguf_utils.tqdm is original  # type: ignore[attr-defined]
