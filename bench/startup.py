"""Startup time and decode speed of the default model: ``.venv/bin/python bench/startup.py``.

Measures, with the converted model already in the cache (run it once to convert, ~20 s):

- seconds from process start to "ready for the first prompt": imports, resolving the cached
  model, loading it, wrapping it in the LoRA adapter, starting the engine, a first
  ``count_tokens``;
- time to first token and decode speed of one greedy reply to "Tell me about the sea.";
- total decode speed of several replies generated together (continuous batching).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # first thing: everything after this counts as startup

import argparse  # noqa: E402 - measured from here on
import asyncio  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from a benchmark

from bench.common import QUESTIONS  # noqa: E402
from bot.types import GenerationParams, Turn  # noqa: E402 - standard library only: cheap

if TYPE_CHECKING:
    from bot.engine.generator import TransformersGenerator

PROMPT = QUESTIONS[0]
BATCH_PROMPTS = QUESTIONS[:8]


def _since_process_start() -> float:
    """Seconds since the kernel started this process (Linux), else since this file began."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _STARTED


async def main(args: argparse.Namespace) -> None:
    marks: list[tuple[str, float]] = []
    last = _STARTED

    def mark(label: str) -> None:
        nonlocal last
        now = time.perf_counter()
        marks.append((label, now - last))
        last = now

    import torch

    from bot.engine.generator import TransformersGenerator, resolve_model
    from bot.settings import LoraSettings, ModelSettings

    mark("import torch, transformers, peft, bot.engine.generator")
    settings = ModelSettings(
        dtype=args.dtype,
        threads=args.threads,
        pack_weights=not args.no_pack,
        exact_batching=not args.fast_batching,
    )
    resolve_model(settings, progress=True)
    mark("resolve model (cached conversion)")
    gen = await TransformersGenerator.load(settings, LoraSettings())
    mark("load model, wrap LoRA, start engine")
    await gen.count_tokens([Turn("user", PROMPT)])
    mark("first count_tokens")
    ready = _since_process_start()

    mode = "fast (batched SDPA)" if args.fast_batching else "exact"
    print(
        f"\nselftune startup: {gen.model_name} on {gen.device}, {_dtype(gen)}, "
        f"{torch.get_num_threads()} threads, {mode} batching"
    )
    rows = [(label, f"{seconds:.2f} s") for label, seconds in marks]
    _table([*rows, ("ready for the first prompt, from process start", f"{ready:.2f} s")])
    try:
        await _decode(gen, args)
    finally:
        await gen.aclose()


async def _decode(gen: TransformersGenerator, args: argparse.Namespace) -> None:
    params = GenerationParams(max_new_tokens=args.tokens, temperature=0.0)
    tokens_before = gen.stats.tokens
    started = time.perf_counter()
    first_at = None
    pieces = []
    async for piece in gen.stream([Turn("user", PROMPT)], params):
        first_at = first_at or time.perf_counter()
        pieces.append(piece)
    ended = time.perf_counter()
    tokens = gen.stats.tokens - tokens_before
    assert first_at is not None
    rows = [
        ("time to first token", f"{first_at - started:.2f} s"),
        ("reply tokens", f"{tokens}"),
        ("decode speed, one reply", f"{(tokens - 1) / (ended - first_at):.1f} tokens/s"),
    ]
    for size in args.batch:
        total, seconds = await _batched(gen, size, args.batch_tokens)
        rows.append((f"decode speed, {size} replies together", f"{total / seconds:.1f} tokens/s"))
    print()
    _table(rows)
    print(f"\nreply: {''.join(pieces)[:300]!r}")


async def _batched(gen: TransformersGenerator, size: int, tokens: int) -> tuple[int, float]:
    """All ``size`` replies started together; returns tokens made and seconds taken."""
    params = GenerationParams(max_new_tokens=tokens, temperature=0.0)
    prompts = [[Turn("user", BATCH_PROMPTS[i % len(BATCH_PROMPTS)])] for i in range(size)]

    async def one(turns: list[Turn]) -> None:
        async for _ in gen.stream(turns, params):
            pass

    before = gen.stats.tokens
    started = time.perf_counter()
    await asyncio.gather(*(one(turns) for turns in prompts))
    return gen.stats.tokens - before, time.perf_counter() - started


def _dtype(gen: TransformersGenerator) -> str:
    return str(gen.dtype).removeprefix("torch.")


def _table(rows: list[tuple[str, str]]) -> None:
    for label, value in rows:
        print(f"  {label:<48} {value:>16}")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens of the single reply")
    parser.add_argument("--batch", type=int, nargs="*", default=[4, 8], help="batch sizes")
    parser.add_argument("--batch-tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument(
        "--fast-batching", action="store_true", help="exact_batching=False (batched SDPA)"
    )
    parser.add_argument("--no-pack", action="store_true", help="pack_weights=False")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_args()))
