"""Serving speed: N concurrent chats through the ChatService, against one-at-a-time baselines.

Run it alone on the machine (other benchmarks take the same lock)::

    flock /tmp/selftune-bench.lock .venv/bin/python bench/serving.py

In one run: the machine's memory bandwidth and the batch-1 decode limit it implies for the
weights in use; N = 1, 4, 16, 32 simulated chats on the real default model through the real
ChatService (total tokens/s, tokens/s per chat, time to first token p50/p95, peak memory);
then the N=16 requests replayed through (a) transformers ``generate`` and (b) llama-cpp-python
on the same GGUF, each one request at a time; and the ratios the targets are set in.
``--profile`` adds a torch.profiler table of batch-1 decoding steps.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench.serving_baselines import BaselineResult, llama_cpp, transformers_generate
from bench.serving_chats import PeakMemory, Request, RunResult, run_chats
from bench.serving_report import print_report
from bot.app import build_core
from bot.engine.generator import TransformersGenerator
from bot.engine.runtime import default_threads
from bot.generation import Generator
from bot.generation.source import default_gguf_path
from bot.settings import LoraSettings, ModelSettings, Settings, load_settings


def bandwidth_gbs(
    threads: int | None = None, megabytes: int = 1024, repeats: int = 6
) -> tuple[float, float]:
    """Memory bandwidth of a large tensor copy (bytes read plus written per second) and of a
    large sum (bytes read per second), best of ``repeats``, with ``threads`` torch threads
    (default: every core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        return _bandwidth(megabytes, repeats)
    finally:
        torch.set_num_threads(before)


def _bandwidth(megabytes: int, repeats: int) -> tuple[float, float]:
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    target = torch.zeros_like(source)  # written once first: no page faults in the timing
    copy = read = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        copy = min(copy, time.perf_counter() - started)
        started = time.perf_counter()
        source.sum()
        read = min(read, time.perf_counter() - started)
    size = source.numel() * 4
    return 2 * size / copy / 1e9, size / read / 1e9


def weight_bytes(model: Any) -> int:
    """Bytes of weights one decoding step reads: every parameter once (tied ones once), the
    LoRA matrices excepted (an empty slot computes none)."""
    seen: set[int] = set()
    total = 0
    for name, param in model.named_parameters():
        if "lora_" in name or id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel() * param.element_size()
    return total


def bench_settings(data_dir: Path, args: argparse.Namespace) -> Settings:
    settings, _ = load_settings(None, {"SELFTUNE_DATA_DIR": str(data_dir)})
    generation = settings.generation.model_copy(
        update={"max_new_tokens": args.tokens, "temperature": 0.0}  # greedy: comparable replies
    )
    return settings.model_copy(update={"generation": generation})


async def run_ours(args: argparse.Namespace) -> tuple[dict[int, RunResult], dict[str, Any]]:
    settings = ModelSettings(
        dtype=args.dtype,
        threads=args.threads,
        pack_weights=not args.no_pack,
        exact_batching=not args.fast_batching,
        max_batch_size=max(args.chats),
    )
    gen = await TransformersGenerator.load(settings, LoraSettings())
    info = {
        "model_dir": gen.model_dir,
        "dtype": gen.dtype,
        "weight_bytes": weight_bytes(gen._model),
        "device": gen.device,
        "threads": settings.threads or default_threads(),
    }
    results: dict[int, RunResult] = {}
    with tempfile.TemporaryDirectory() as tmp:

        async def core_for(generator: Generator) -> Any:
            folder = Path(tempfile.mkdtemp(dir=tmp))
            return await build_core(
                bench_settings(folder, args), generator=generator, progress=False, lock=False
            )

        await run_chats(core_for, gen, 2, 1, spread_s=0.0)  # warm-up: first-call costs
        try:
            for chats in args.chats:
                with PeakMemory() as memory:
                    result = await run_chats(core_for, gen, chats, args.turns)
                result.peak_mb = memory.peak_mb
                results[chats] = result
                print(
                    f"  ... {chats} chats: {len(result.requests)} replies in "
                    f"{result.seconds:.1f} s, errors: {len(result.errors)}",
                    flush=True,
                )
            if args.profile:
                from bench.serving_profile import profile_batch1

                profile_batch1(gen)
        finally:
            await gen.aclose()
    return results, info


async def main(args: argparse.Namespace) -> None:
    print(f"load average before: {os.getloadavg()}", flush=True)
    threads = args.threads or default_threads()
    # Before the run and after it, the better of two: the machine is shared.
    bandwidth = bandwidth_gbs()
    bandwidth_decoding = bandwidth_gbs(threads)
    ours, info = await run_ours(args)
    gc.collect()
    replay = ours.get(16) or ours[max(ours)]
    requests = sorted(replay.requests, key=lambda r: r.arrived)[: args.baseline_requests]
    baselines: list[tuple[BaselineResult, Sequence[Request]]] = []
    if not args.skip_transformers:
        print(f"  ... transformers generate: {len(requests)} requests", flush=True)
        threads = os.cpu_count() or 1  # its best on an idle machine: every core
        result = transformers_generate(info["model_dir"], info["dtype"], requests, threads)
        baselines.append((result, requests))
    if not args.skip_llama:
        print(f"  ... llama.cpp: {len(requests)} requests", flush=True)
        baselines.append((llama_cpp(default_gguf_path(), requests), requests))
    again, again_decoding = bandwidth_gbs(), bandwidth_gbs(threads)
    bandwidth = (max(bandwidth[0], again[0]), max(bandwidth[1], again[1]))
    decoding = max(bandwidth_decoding[0], again_decoding[0])
    print_report(args, ours, info, baselines, bandwidth, decoding)
    print(f"\nload average after: {os.getloadavg()}")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--turns", type=int, default=2, help="messages each chat sends")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens of a reply")
    parser.add_argument("--baseline-requests", type=int, default=32)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fast-batching", action="store_true", help="exact_batching=False")
    parser.add_argument("--no-pack", action="store_true", help="pack_weights=False")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile batch-1 steps")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_args()))
