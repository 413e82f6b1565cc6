"""The in-process llama.cpp engine as a system of ``bench/serving.py``, in a process of its own.

The bot serves with this engine from a process that never runs torch (the trainer is a child
process, the first start converts the model in one: ``bot.generation.source``). The bench must
measure it so: the bench process runs torch (the bandwidth copy, the transformers engine), and
with torch's OpenMP threads in the same process llama.cpp's own OpenMP threads decoded a lone
reply at 68-74 tok/s instead of 126, and 16 rows at 347 instead of 393 (2 threads, measured on
the 2-core reference machine). So :func:`in_own_process` runs :func:`bench_llama_engine` in a
fresh interpreter (``python -m bench.serving_llama_engine JOB RESULT``, pickles both ways), and
that interpreter checks at the end that torch was never imported.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.serving_chats import PeakMemory
from bench.serving_perf import Perf
from bench.serving_report import Counter, SystemResult
from bench.serving_systems import llama_engine_stream
from bench.serving_threads import shares
from bench.serving_workloads import StreamFn, Workload, measure, run_system
from bot.generation.source import resolve_model
from bot.ggml.generator import LlamaCppGenerator
from bot.ggml.threads import thread_choices, usable_cores
from bot.settings import LoraSettings, ModelSettings

LLAMA_ENGINE = "selftune engine (llama.cpp)"
PROFILED = "fixed-16"  # the workload the profiles run
ROOT = Path(__file__).resolve().parents[1]


def in_own_process(
    args: argparse.Namespace, loads: dict[str, Workload], logs: Path
) -> tuple[SystemResult, str]:
    """:func:`bench_llama_engine` in a fresh interpreter without torch (blocking); its output
    goes to this process's terminal."""
    with tempfile.TemporaryDirectory() as tmp:
        job, result = Path(tmp) / "job.pickle", Path(tmp) / "result.pickle"
        job.write_bytes(pickle.dumps((args, loads, logs)))
        command = [sys.executable, "-m", "bench.serving_llama_engine", str(job), str(result)]
        subprocess.run(command, check=True, cwd=ROOT)
        answer: tuple[SystemResult, str] = pickle.loads(result.read_bytes())
        return answer


async def bench_llama_engine(
    args: argparse.Namespace, loads: dict[str, Workload], count: Counter, logs: Path
) -> tuple[SystemResult, str]:
    """The in-process llama.cpp engine, on the same requests and token accounting; and the
    profile of its 16-row steps."""
    settings = ModelSettings(
        engine="llama.cpp",
        gguf_weights=args.engine_gguf,
        threads=args.threads,
        max_batch_size=32,
    )
    gen = await LlamaCppGenerator.load(settings, LoraSettings())
    choices = thread_choices(settings.threads, usable_cores())
    threads = "/".join(map(str, choices))
    result = SystemResult(LLAMA_ENGINE, anchor=False)
    result.note = (
        f"{args.engine_gguf} GGUF, {threads} thread(s)"
        + (" picked per step by measured speed" if len(choices) > 1 else "")
        + ", max batch 32, in a process without torch"
    )
    try:
        with PeakMemory() as memory:
            stream = llama_engine_stream(gen)
            result.summaries = await run_system(LLAMA_ENGINE, stream, loads, args.runs, count)
        result.peak_mb = memory.peak_mb
        if len(choices) > 1:
            result.note += f"; steps: {shares(gen.stats.thread_steps)} thread(s)"
        profile = ""
        if not args.no_profile and PROFILED in loads:
            profile = await llama_engine_profile(gen, stream, loads[PROFILED], logs)
        return result, profile
    finally:
        await gen.aclose()


async def llama_engine_profile(gen: Any, stream: StreamFn, load: Workload, logs: Path) -> str:
    """Two more runs of ``load``: the engine's step time split into llama_decode and the rest
    (perf slows a step down, so without it), then perf's samples of the whole process (the
    event loop's thread too)."""
    before = dataclasses.replace(gen.stats)
    await measure(stream, load)
    await asyncio.sleep(0.2)  # the last step's time is counted just after its pieces go out
    after = dataclasses.replace(gen.stats)
    with Perf(os.getpid(), logs / "perf-engine.data") as perf:
        await measure(stream, load)
    steps = after.steps - before.steps
    step = (after.step_seconds - before.step_seconds) / max(steps, 1) * 1000
    decode = (after.decode_seconds - before.decode_seconds) / max(steps, 1) * 1000
    split = (
        f"llama_decode {decode:.1f} ms ({decode / step:.0%}), the rest {step - decode:.1f} ms "
        "(admitting, filling the batch, sampling, text, handing pieces on)"
        if step > 0
        else "no step ran"
    )
    return (
        f"{LLAMA_ENGINE}, {load.concurrency} fixed rows: {steps} steps (llama_decode calls, "
        f"the prompts' included) of {step:.1f} ms: {split}\n\n"
        f"perf, the whole process:\n{perf.table()}"
    )


def main(job: Path, out: Path) -> None:
    args, loads, logs = pickle.loads(job.read_bytes())
    count = Counter(resolve_model(ModelSettings(), progress=False))
    answer = asyncio.run(bench_llama_engine(args, loads, count, logs))
    if "torch" in sys.modules:  # the point of this process: fail loudly rather than mislead
        raise SystemExit("torch was imported in the llama.cpp engine's bench process")
    out.write_bytes(pickle.dumps(answer))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
