"""Serving speed: selftune against llama.cpp's server and vLLM, same requests, one run.

Run it alone on the machine (other benchmarks take the same lock)::

    flock /tmp/selftune-bench.lock .venv/bin/python bench/serving.py --runs 3

Systems, each on the same requests with the same greedy settings and token accounting (see
:mod:`bench.serving_workloads`):

- selftune's local engines through the Generator contract: torch in this process, and
  llama.cpp (``model.engine = "llama.cpp"``, the GGUF precision of ``--engine-gguf``) in a
  process of its own without torch, as the bot runs it (:mod:`bench.serving_llama_engine`);
- ``llama-server`` built from llama.cpp's source with native CPU flags (built once into
  ``~/.cache/selftune/llama.cpp``, see :mod:`bench.serving_llama_server`), with BF16, Q8_0 and
  the shipped Q4_1 GGUF, 1 and 2 threads, ``-np 16`` (``-np 32`` for 32 chats): anchors;
- vLLM's CPU server (``scripts/vllm-venv``) directly over HTTP (an anchor) and through
  selftune's OpenAI backend (the issue-12 figure: the backend beside the local engine).

Workloads: fixed-length rows (16 at once, and one at a time) and chat replies (16 and 32 at
once). Each is run ``--runs`` times per system; the report shows medians, the ratio to the best
anchor, TTFT p50/p95, peak memory, a lone reply against the memory-bandwidth limits (1 thread
and the decoding threads, bf16 weights) and a profile of one 16-row decoding step, and is
saved under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench import serving_gguf, serving_llama_engine, serving_llama_server
from bench.serving_chats import PeakMemory
from bench.serving_perf import Perf
from bench.serving_report import (
    Bandwidth,
    Counter,
    SystemResult,
    bandwidth_lines,
    target_lines,
    workload_table,
)
from bench.serving_systems import (
    engine_stream,
    generator_stream,
    http_stream,
)
from bench.serving_workloads import (
    Summary,
    Workload,
    measure,
    run_system,
    workload,
)
from bot.engine.generator import TransformersGenerator
from bot.engine.runtime import default_threads
from bot.generation.openai_api import OpenAIGenerator
from bot.generation.source import default_gguf_path, resolve_model
from bot.ggml.threads import usable_cores
from bot.settings import BackendSettings, LoraSettings, ModelSettings
from bot.settings.serving import ChatSettings

ENGINE = "selftune engine (Generator)"
LLAMA_ENGINE = serving_llama_engine.LLAMA_ENGINE
PROFILED = serving_llama_engine.PROFILED
RESULTS = Path(__file__).resolve().parent / "results"


def labels(tokens: int) -> dict[str, str]:
    """Each workload key's title in the report."""
    return {
        "fixed-16": f"Fixed-length rows ({tokens} tokens, end of turn ignored, no system prompt), "
        "16 at once",
        "fixed-1": "Fixed-length rows, one at a time",
        "chat-16": f"Chat replies (default system prompt, ≤ {tokens} tokens, stop at end of turn), "
        "16 at once",
        "chat-32": "Chat replies, 32 at once",
    }


def bandwidth_gbs(threads: int, megabytes: int = 1024, repeats: int = 6) -> float:
    """Copy bandwidth of a large tensor (bytes read plus written per second), best of
    ``repeats``, with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
        target = torch.zeros_like(source)  # written once first: no page faults in the timing
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            target.copy_(source)
            best = min(best, time.perf_counter() - started)
        return 2 * source.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(before)


def bf16_weight_bytes(model: Any) -> int:
    """Bytes of bf16 weights one decoding step reads: every parameter once (tied ones once),
    the LoRA matrices excepted (an empty slot computes none)."""
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if "lora_" not in name:
            seen.add(id(param))
    return int(2 * sum(p.numel() for p in model.parameters() if id(p) in seen))


def workloads(args: argparse.Namespace) -> dict[str, Workload]:
    """The four workloads, keyed as in labels()."""
    system = ChatSettings().system_prompt  # the bot's default
    return {
        "fixed-16": workload("fixed", 16, 16, args.tokens, system),
        "fixed-1": workload("fixed", args.sequential, 1, args.tokens, system),
        "chat-16": workload("chat", 16, 16, args.tokens, system),
        "chat-32": workload("chat", 32, 32, args.tokens, system),
    }


async def bench_engine(
    args: argparse.Namespace, loads: dict[str, Workload], count: Counter
) -> tuple[SystemResult, int, str]:
    """The local engine: its result, the bf16 weight bytes and the 16-row step's profile."""
    settings = ModelSettings(
        dtype=args.dtype,
        threads=args.threads,
        pack_weights=not args.no_pack,
        exact_batching=not args.fast_batching,
        max_batch_size=32,
    )
    gen = await TransformersGenerator.load(settings, LoraSettings())
    result = SystemResult(ENGINE, anchor=False)
    result.note = (
        f"{str(gen._model.dtype).removeprefix('torch.')}, "
        f"{settings.threads or default_threads()} decoding thread(s), max batch 32"
    )
    try:
        with PeakMemory() as memory:
            result.summaries = await run_system(ENGINE, engine_stream(gen), loads, args.runs, count)
        result.peak_mb = memory.peak_mb
        profile = ""
        if not args.no_profile:
            from bench.serving_profile import profile_step

            profile = await asyncio.to_thread(profile_step, gen, 16)
        return result, bf16_weight_bytes(gen._model), profile
    finally:
        await gen.aclose()


async def bench_llama(
    args: argparse.Namespace, loads: dict[str, Workload], count: Counter, logs: Path
) -> tuple[list[SystemResult], str]:
    """llama-server per weight format and thread count; -np 32 for the 32-chat workload; and
    perf's profile of the first format at the most threads on the 16 fixed rows."""
    program = serving_llama_server.binary()
    cache = serving_llama_server.cache_dir() / "gguf"
    results = []
    profile = ""
    for fmt in args.formats:
        gguf = serving_gguf.weights(default_gguf_path(), cache, fmt)
        for threads in args.llama_threads:
            result = SystemResult(f"llama-server {fmt}, {threads} thread(s)", anchor=True)
            for slots, keys in ((16, ["fixed-16", "fixed-1", "chat-16"]), (32, ["chat-32"])):
                chosen = {k: loads[k] for k in keys if k in loads}
                log = logs / f"llama-{fmt}-{threads}-{slots}.log"
                server = serving_llama_server.LlamaServer(program, gguf, threads, slots, log)
                profiled = (
                    not args.no_profile
                    and slots == 16
                    and (fmt, threads) == (args.formats[0], max(args.llama_threads))
                )
                summaries, peak, table = await _served(
                    server, chosen, args.runs, count, result.name, logs if profiled else None
                )
                result.summaries.update(summaries)
                result.peak_mb = max(result.peak_mb, peak)
                if table:
                    profile = f"{result.name}, -np 16, 16 fixed rows, perf:\n{table}"
            results.append(result)
    return results, profile


async def _served(
    server: Any,
    loads: dict[str, Workload],
    runs: int,
    count: Counter,
    name: str,
    profile_to: Path | None = None,
) -> tuple[dict[str, Summary], float, str]:
    """Start ``server``, run ``loads`` on it over HTTP, stop it; (medians, peak memory, and
    with ``profile_to`` perf's table of one more run of the 16 fixed rows)."""
    await asyncio.to_thread(server.start)
    try:
        import httpx

        with PeakMemory(server.process.pid, tree=True) as memory:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=300.0) as client:
                stream = http_stream(client, "smollm2")
                summaries = await run_system(name, stream, loads, runs, count)
                table = ""
                if profile_to is not None and PROFILED in loads:
                    with Perf(server.process.pid, profile_to / "perf-server.data") as perf:
                        await measure(stream, loads[PROFILED])
                    table = perf.table()
                return summaries, memory.peak_mb, table
    finally:
        await asyncio.to_thread(server.stop)


async def bench_vllm(
    args: argparse.Namespace, loads: dict[str, Workload], count: Counter, logs: Path
) -> list[SystemResult]:
    """vLLM's CPU server driven directly (an anchor, every workload) and through selftune's
    OpenAI backend (the chat workloads: the Generator contract cannot ignore the end of turn)."""
    from bench.serving_vllm import BenchVllmServer, vllm_python

    model_dir = resolve_model(ModelSettings(), progress=False)
    server = BenchVllmServer(vllm_python(), model_dir, "smollm2", logs / "vllm.log")
    direct = SystemResult("vLLM CPU server, HTTP", anchor=True, note="bf16, all cores")
    backend = SystemResult("selftune OpenAI backend → vLLM", anchor=False, note="bf16")
    await asyncio.to_thread(server.start)
    try:
        import httpx

        assert server.process is not None
        with PeakMemory(server.process.pid, tree=True) as memory:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=300.0) as client:
                stream = http_stream(client, "smollm2")
                direct.summaries = await run_system(direct.name, stream, loads, args.runs, count)
            settings = BackendSettings(kind="openai", base_url=server.base_url, model="smollm2")
            gen = await OpenAIGenerator.connect(settings, ModelSettings(), model_dir=model_dir)
            chats = {k: v for k, v in loads.items() if not v.ignore_eos}
            try:
                backend.summaries = await run_system(
                    backend.name, generator_stream(gen), chats, args.runs, count
                )
            finally:
                await gen.aclose()
        direct.peak_mb = backend.peak_mb = memory.peak_mb
    finally:
        await asyncio.to_thread(server.stop)
    return [direct, backend]


async def main(args: argparse.Namespace) -> None:
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)
    if not args.skip_llama:
        serving_llama_server.binary()  # build first (once): not inside anyone's timing
    # Unset, the llama.cpp engine decodes a lone idle reply on every core (bot.ggml.threads).
    decoding = args.threads or usable_cores()
    band = [bandwidth_gbs(1), bandwidth_gbs(decoding)]
    loads = workloads(args)
    count = Counter(resolve_model(ModelSettings(), progress=False))
    systems, profiles, weight_bytes = await run_systems(args, loads, count)
    band = [max(band[0], bandwidth_gbs(1)), max(band[1], bandwidth_gbs(decoding))]
    bandwidth = Bandwidth(band[0], band[1], decoding, weight_bytes or 269_000_000)
    text = report(args, systems, bandwidth, profiles, (started, load_before, os.getloadavg()))
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"serving-{time.strftime('%Y%m%d-%H%M')}.md"
    path.write_text(text)
    print(f"saved to {path}")


async def run_systems(
    args: argparse.Namespace, loads: dict[str, Workload], count: Counter
) -> tuple[list[SystemResult], dict[str, str], int]:
    """Every system the arguments keep, one after the other: their results, their profiles
    by name and the torch engine's bf16 weight bytes (0 without it)."""
    systems: list[SystemResult] = []
    profiles: dict[str, str] = {}
    weight_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        if not args.skip_llama_engine:  # in a process without torch, as the bot runs it
            llama_engine, profiles[LLAMA_ENGINE] = await asyncio.to_thread(
                serving_llama_engine.in_own_process, args, loads, logs
            )
            systems.append(llama_engine)
        if not args.skip_engine:
            engine, weight_bytes, profiles[ENGINE] = await bench_engine(args, loads, count)
            systems.append(engine)
        if not args.skip_llama:
            servers, profiles["llama-server"] = await bench_llama(args, loads, count, logs)
            systems.extend(servers)
        if not args.skip_vllm:
            systems.extend(await _optional_vllm(args, loads, count, logs))
    return systems, profiles, weight_bytes


async def _optional_vllm(
    args: argparse.Namespace, loads: dict[str, Workload], count: Counter, logs: Path
) -> list[SystemResult]:
    """vLLM's figures, or none (with the reason) when its venv or server is not available."""
    try:
        return await bench_vllm(args, loads, count, logs)
    except Exception as exc:  # the other systems' figures still count
        print(f"  ... vLLM skipped: {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
        return []


def report(
    args: argparse.Namespace,
    systems: list[SystemResult],
    bandwidth: Bandwidth,
    profiles: dict[str, str],
    when: tuple[str, tuple[float, ...], tuple[float, ...]],
) -> str:
    """The whole markdown report."""
    started, before, after = when
    lines = [
        f"## Serving bench, {started} ({platform.node()}, {os.cpu_count()} cores)",
        "",
        f"`bench/serving.py {' '.join(sys.argv[1:])}`: SmolLM2-135M-Instruct, greedy, "
        f"{args.tokens} new tokens at most; medians of {args.runs} run(s). Load average "
        f"before {before[0]:.2f}, after {after[0]:.2f} (the machine may be shared).",
        "",
        *(f"- {s.name}: {s.note}" for s in systems if s.note),
        "",
    ]
    for key, label in labels(args.tokens).items():
        lines += workload_table(systems, key, label)
    alone = {s.name: s.summaries["fixed-1"].decode for s in systems if "fixed-1" in s.summaries}
    lines += bandwidth_lines(bandwidth, alone)
    lines += target_lines(systems, LLAMA_ENGINE) + target_lines(systems, ENGINE)
    for name, profile in profiles.items():
        if profile:
            title = f"### Profile of 16-row decoding steps: {name}"
            lines += [title, "", "```", profile, "```", ""]
    return "\n".join(lines)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per system; medians shown")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens of a reply")
    parser.add_argument("--sequential", type=int, default=16, help="rows sent one at a time")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="the engine's threads")
    parser.add_argument("--fast-batching", action="store_true", help="exact_batching=False")
    parser.add_argument("--no-pack", action="store_true", help="pack_weights=False")
    parser.add_argument("--formats", nargs="+", default=list(serving_gguf.FORMATS))
    parser.add_argument("--llama-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-llama-engine", action="store_true")
    parser.add_argument(
        "--engine-gguf", default="bf16", choices=["bf16", "f32", "q8_0"], help="llama.cpp engine"
    )
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    unknown = set(args.formats) - set(serving_gguf.FORMATS)
    if unknown or args.runs < 1 or args.sequential < 1 or args.tokens < 2:
        parser.error(
            f"bad arguments (formats: {', '.join(serving_gguf.FORMATS)}; runs, "
            "sequential >= 1; tokens >= 2)"
        )
    return args


if __name__ == "__main__":
    asyncio.run(main(_args()))
