"""Reply latency while the trainer runs vs idle, on the real default model.

Replies go through the ChatService (as a platform adapter would call it), one at a time, greedy
and of a fixed length; first idle, then while a fine-tuning run is in its training loop (the
trainer subprocess at ``training.nice``), which is then cancelled.

    flock /tmp/selftune-bench.lock .venv/bin/python bench/training_latency.py [--nice N]
        [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.app import Core, build_core
from bot.learning.protocol import Step
from bot.settings import Settings, load_settings
from bot.types import Draft, Incoming, Turn, Vote

QUESTIONS = [
    "Tell me about the sea.",
    "What is a good breakfast?",
    "Why do cats purr?",
    "How do trains work?",
    "Any tips for sleeping well?",
    "What makes music pleasant?",
]
LONG = (
    "Here is a long and careful answer. First, consider the context and what you want to "
    "achieve; then look at the options one by one, weighing what each costs and what it "
    "gives. Many people find it useful to write the options down, sleep on it, and come "
    "back the next day with fresh eyes. "
)


def _settings(args: argparse.Namespace, data_dir: Path) -> Settings:
    base, _ = load_settings(None, {"SELFTUNE_DATA_DIR": str(data_dir)})
    return base.model_copy(
        update={
            "generation": base.generation.model_copy(
                update={"temperature": 0.0, "max_new_tokens": args.tokens}
            ),
            "chat": base.chat.model_copy(update={"user_messages_per_minute": 0}),
            "model": base.model.model_copy(update={"threads": args.threads}),
            "training": base.training.model_copy(
                update={"epochs": 100.0, "max_length": 256}
                | ({"nice": args.nice} if args.nice is not None else {})
            ),
        }
    )


async def seed_ratings(core: Core, count: int) -> None:
    """Rated exchanges with long replies (so training steps are heavy), half liked."""
    for i in range(count):
        chat, user = f"bench:seed{i}", f"bench:u{i % 4}"
        question = f"{QUESTIONS[i % len(QUESTIONS)]} (variant {i})"
        message = await core.repo.add_user_message(chat, user, "User", question, None)
        prompt = (Turn("system", core.settings.chat.system_prompt), Turn("user", question))
        exchange = await core.repo.start_exchange(chat, user, message, prompt, None, "m", {})
        await core.repo.finish_exchange(exchange, LONG * (1 + i % 2))
        await core.repo.rate(exchange, user, Vote.UP if i % 2 else Vote.DOWN)


async def replies(core: Core, count: int, tag: str) -> list[tuple[float, float]]:
    """(seconds to the first text, seconds to the whole reply) of ``count`` replies."""
    out = []
    for i in range(count):
        who = Incoming("bench", f"{tag}{i}", f"{tag}{i}", "Bench", "")
        await core.repo.new_conversation(who.chat_key)
        started = time.perf_counter()
        first = None
        async for item in core.service.respond(replace(who, text=QUESTIONS[i % len(QUESTIONS)])):
            if first is None and isinstance(item, Draft):
                first = time.perf_counter() - started
        out.append((first or 0.0, time.perf_counter() - started))
    return out


def summary(samples: list[tuple[float, float]]) -> str:
    """Greedy replies to the same questions are the same text idle and busy: times compare."""
    first = [s[0] for s in samples]
    whole = [s[1] for s in samples]
    return (
        f"first text median {statistics.median(first):.2f} s (max {max(first):.2f}), "
        f"whole reply median {statistics.median(whole):.2f} s (max {max(whole):.2f})"
    )


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="selftune-latency-"))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    core = await build_core(_settings(args, data_dir), progress=False)
    try:
        await seed_ratings(core, 48)
        await replies(core, 1, "warm")  # first-call costs out of the way
        idle = await replies(core, args.replies, "idle")
        print(f"idle:            {summary(idle)}", flush=True)

        stepping = asyncio.Event()

        async def notify(text: str) -> None:
            if text.startswith("Training: step"):  # the training loop proper has begun
                stepping.set()

        await core.finetuner.start(trigger="bench", requested_by=None, notify=notify)
        await stepping.wait()
        busy = await replies(core, args.replies, "busy")
        progress = core.finetuner.progress
        step = progress.step if isinstance(progress, Step) else None
        nice = core.settings.training.nice
        print(
            f"during training: {summary(busy)} (trainer at step {step}, nice {nice})",
            flush=True,
        )
        ratio = statistics.median(b[1] for b in busy) / statistics.median(i[1] for i in idle)
        print(f"slowdown of a whole reply: ×{ratio:.2f}")
        await core.finetuner.cancel()
    finally:
        await core.aclose()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per reply")
    parser.add_argument(
        "--nice", type=int, default=None, help="the trainer's nice value (default: the default's)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="the engine's threads (default: the default's)"
    )
    asyncio.run(main(parser.parse_args()))
