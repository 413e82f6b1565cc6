"""The llama.cpp engine's thread count, idle and under load: a lone reply and 16 fixed rows on
every core but one, on every core, and picked per step by measurement (``model.threads`` unset:
bot.ggml.threads), first on an idle machine, then next to one busy process at nice 0 (another
program on the same cores). The default model, bf16 GGUF, greedy, 64 tokens a row; the engine in
this process, which never imports torch (its OpenMP threads slow ggml's down).

    flock /tmp/selftune-bench.lock .venv/bin/python bench/serving_threads.py [--runs 3]

Prints tokens/s per setting and load (the median of the runs, and each run), and the share of
the steps run on each thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.serving_systems import llama_engine_stream
from bench.serving_workloads import Workload, measure, workload
from bot.ggml.generator import LlamaCppGenerator
from bot.ggml.threads import thread_choices, usable_cores
from bot.settings import LoraSettings, ModelSettings

SPIN = "while True: pass"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lone", type=int, default=4, help="lone replies per run")
    return parser.parse_args()


async def tokens_per_s(gen: LlamaCppGenerator, load: Workload) -> float:
    stream = llama_engine_stream(gen)
    before = gen.stats.tokens
    result = await measure(stream, load)
    if result.errors:
        raise RuntimeError("; ".join(result.errors))
    return (gen.stats.tokens - before) / result.wall_s


async def setting(threads: int | None, args: argparse.Namespace) -> dict[str, str]:
    """Each workload's tokens/s per run, idle and busy, with ``threads`` (None: tuned), and
    the share of its steps on each thread count."""
    settings = ModelSettings(engine="llama.cpp", gguf_weights="bf16", threads=threads)
    gen = await LlamaCppGenerator.load(settings, LoraSettings())
    loads = {
        "alone": workload("fixed", args.lone, 1, 64, ""),
        "16 rows": workload("fixed", 16, 16, 64, ""),
    }
    speeds: dict[str, list[float]] = {}
    counts: dict[str, Counter[int]] = {}
    try:
        await tokens_per_s(gen, workload("fixed", 1, 1, 64, ""))  # warm up
        for busy in (False, True):
            spinner = (
                await asyncio.create_subprocess_exec(sys.executable, "-c", SPIN) if busy else None
            )
            try:
                await asyncio.sleep(0.5 if busy else 0)
                for _ in range(args.runs):
                    for name, load in loads.items():
                        key = f"{name}, {'busy' if busy else 'idle'}"
                        before = Counter(gen.stats.thread_steps)
                        speeds.setdefault(key, []).append(await tokens_per_s(gen, load))
                        used = Counter(gen.stats.thread_steps)
                        used.subtract(before)
                        counts.setdefault(key, Counter()).update(used)
            finally:
                if spinner is not None:
                    spinner.kill()
                    await spinner.wait()
    finally:
        await gen.aclose()
    if "torch" in sys.modules:
        raise SystemExit("torch was imported: its OpenMP threads would slow ggml's down")
    return {key: _cell(speeds[key], counts[key]) for key in speeds}


def shares(steps: Mapping[int, int]) -> str:
    """The share of ``steps`` (per thread count) run on each count: "4% on 1 / 96% on 2"."""
    total = sum(steps.values()) or 1
    return " / ".join(f"{n / total:.0%} on {t}" for t, n in sorted(steps.items()))


def _cell(speeds: list[float], steps: Counter[int]) -> str:
    runs = ", ".join(f"{v:.0f}" for v in speeds)
    return f"{statistics.median(speeds):.1f} ({runs}; {shares(steps)})"


def main() -> None:
    args = _args()
    cores = usable_cores()
    results = {}
    for threads in (*thread_choices(None, cores), None):
        name = "tuned" if threads is None else f"{threads} thread(s)"
        results[name] = asyncio.run(setting(threads, args))
    keys = list(next(iter(results.values())))
    print("\n| tok/s, median (runs; steps per thread count) | " + " | ".join(keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for name, found in results.items():
        print(f"| {name} | " + " | ".join(found[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
