"""Turning a GGUF model into a transformers directory (torch), and transformers' progress bars.

:mod:`bot.generation.source` decides where a model comes from without torch; when a GGUF file
must be converted, it imports this module then.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot.errors import ModelLoadError


def convert_gguf(source: str, gguf_file: str, dest: Path, *, progress: bool = True) -> None:
    """Dequantize a GGUF model to float32 safetensors with its tokenizer and generation config.
    Any failure (a damaged file, a broken install) is a ModelLoadError."""
    try:
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer

        stages = tqdm(total=3, desc=f"Preparing {gguf_file}", disable=not progress, file=sys.stderr)
        # One bar on the first start: ours, by stage; transformers' own (dequantizing, loading,
        # writing shards) would nest three more under it.
        with stages, transformers_progress(False), _quiet_gguf_tensors():
            stages.set_postfix_str("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
            stages.update()
            stages.set_postfix_str("dequantizing weights")
            model: Any = AutoModelForCausalLM.from_pretrained(
                source, gguf_file=gguf_file, dtype=torch.float32
            )
            stages.update()
            stages.set_postfix_str("saving")
            # The weights are plain float32 now, but transformers still marks the model as
            # GGUF-quantized and refuses to serialize it; drop those marks before saving.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(dest)
            tokenizer.save_pretrained(dest)
            stages.update()
    except Exception as exc:  # a damaged or foreign file fails in many ways (struct.error too)
        raise ModelLoadError(
            f"cannot convert {source}/{gguf_file} ({type(exc).__name__}: {exc})"
        ) from exc


@contextlib.contextmanager
def _quiet_gguf_tensors() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar, which its progress switch does not
    govern: while converting, its module's ``tqdm`` is one that is disabled."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # a transformers that reads GGUF otherwise: nothing to quiet
        yield
        return
    setattr(gguf_utils, "tqdm", functools.partial(original, disable=True))  # noqa: B010
    try:
        yield
    finally:
        setattr(gguf_utils, "tqdm", original)  # noqa: B010


@contextlib.contextmanager
def transformers_progress(enabled: bool) -> Iterator[None]:
    """Show transformers' own progress bars (GGUF dequantizing, weight loading) only if enabled."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def main(argv: list[str]) -> int:
    """``python -m bot.engine.convert SOURCE GGUF_FILE DEST [--quiet]``: what
    :mod:`bot.generation.source` runs in a child process. The bar goes to stderr; a
    ModelLoadError's message to stdout, for the parent to raise, and the exit code is 1."""
    source, gguf_file, dest = argv[:3]
    try:
        convert_gguf(source, gguf_file, Path(dest), progress="--quiet" not in argv[3:])
    except ModelLoadError as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
