"""Does the bot learn a hidden taste from 👍/👎? The whole loop on the real default model.

Simulated users chat with the bot through the ChatService (sampled replies, temperature > 0)
and rate each reply by a hidden taste (default: replies of at most 50 words); then the real
pipeline trains (Finetuner → trainer subprocess → held-out gate) and, on prompts about topics
nobody asked about, the share of replies that satisfy the taste is measured before and after.

    flock /tmp/selftune-bench.lock .venv/bin/python bench/taste.py [--ratings 320] ...

Prints the load average before and after (the cores are shared), each phase's duration, the
gate's numbers and the taste rates with 95 % intervals; ``--json`` writes them to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.taste_data import HELDOUT_TOPICS, TRAIN_TOPICS, Taste, prompts, taste, words
from bot.app import Core, build_core
from bot.settings import Settings, load_settings
from bot.types import Incoming, Reply, Turn, Vote


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taste", default="short", choices=["short", "question"])
    parser.add_argument("--max-words", type=int, default=50, help="the short taste's limit")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--ratings", type=int, default=320, help="rated replies in all")
    parser.add_argument("--eval-prompts", type=int, default=24)
    parser.add_argument("--samples", type=int, default=4, help="replies per held-out prompt")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args()


def _settings(args: argparse.Namespace, data_dir: Path) -> Settings:
    base, _ = load_settings(None, {"SELFTUNE_DATA_DIR": str(data_dir)})
    return base.model_copy(
        update={
            "generation": base.generation.model_copy(
                update={"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
            ),
            "chat": base.chat.model_copy(update={"user_messages_per_minute": 0}),
            "training": base.training.model_copy(
                update={"epochs": args.epochs, "learning_rate": args.lr, "max_length": 256}
            ),
        }
    )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _interval(hits: int, n: int) -> str:
    p = hits / n if n else 0.0
    half = 1.96 * math.sqrt(p * (1 - p) / n) if n else 0.0
    return f"{100 * p:.1f}% ± {100 * half:.1f} ({hits}/{n})"


async def measure(core: Core, questions: list[str], samples: int, judge: Taste) -> dict[str, Any]:
    """Share of sampled replies to ``questions`` that the taste likes (served adapter)."""
    system = core.settings.chat.system_prompt
    params = core.service.default_params()
    limit = asyncio.Semaphore(16)  # the engine batches up to 16 sequences

    async def one(question: str) -> str:
        async with limit:
            turns = [Turn("system", system), Turn("user", question)]
            return "".join([piece async for piece in core.generator.stream(turns, params)])

    replies = await asyncio.gather(*(one(q) for q in questions for _ in range(samples)))
    hits = sum(1 for r in replies if judge.likes(r))
    return {
        "liked": hits,
        "replies": len(replies),
        "rate": hits / len(replies),
        "mean_words": sum(words(r) for r in replies) / len(replies),
        "examples": replies[:3],
    }


async def simulate(core: Core, questions: list[str], users: int, judge: Taste) -> dict[str, int]:
    """Users chat in their own private chats (a new conversation per question) and rate."""
    votes = {"up": 0, "down": 0}

    async def user(index: int) -> None:
        who = Incoming("bench", f"chat{index}", f"user{index}", f"User {index}", "")
        for question in questions[index::users]:
            await core.repo.new_conversation(who.chat_key)
            items = [i async for i in core.service.respond(_with_text(who, question))]
            reply = items[-1]
            if not isinstance(reply, Reply) or reply.exchange_id is None:
                continue
            vote = Vote.UP if judge.likes(reply.text) else Vote.DOWN
            await core.service.rate(reply.exchange_id, who.user_key, vote)
            votes["up" if vote is Vote.UP else "down"] += 1

    await asyncio.gather(*(user(i) for i in range(users)))
    return votes


def _with_text(who: Incoming, text: str) -> Incoming:
    from dataclasses import replace

    return replace(who, text=text)


async def train(core: Core) -> Any:
    started = time.monotonic()

    async def notify(text: str) -> None:
        print(f"  [{time.monotonic() - started:6.0f} s] {text}", file=sys.stderr, flush=True)

    return await core.finetuner.run(trigger="bench", requested_by="bench", notify=notify)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    judge = taste(args.taste, args.max_words)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="selftune-taste-"))
    print(f"load average before: {_load()}; data in {data_dir}", flush=True)
    print(f"hidden taste: {judge.describe}", flush=True)
    clock: dict[str, float] = {}
    start = time.monotonic()
    core = await build_core(_settings(args, data_dir), progress=False)
    clock["load model"] = time.monotonic() - start
    heldout = prompts(HELDOUT_TOPICS, args.eval_prompts, seed=1)
    try:
        mark = time.monotonic()
        before = await measure(core, heldout, args.samples, judge)
        clock["measure before"] = time.monotonic() - mark
        print(f"before: {_interval(before['liked'], before['replies'])}", flush=True)
        mark = time.monotonic()
        votes = await simulate(core, prompts(TRAIN_TOPICS, args.ratings, 0), args.users, judge)
        clock["users chat and rate"] = time.monotonic() - mark
        print(f"ratings: 👍 {votes['up']} / 👎 {votes['down']}", flush=True)
        mark = time.monotonic()
        outcome = await train(core)
        clock["fine-tune (subprocess, gate)"] = time.monotonic() - mark
        if outcome.version is not None and core.versions.current != outcome.version:
            await core.versions.activate(outcome.version)  # measure it even if not live
        mark = time.monotonic()
        after = await measure(core, heldout, args.samples, judge)
        clock["measure after"] = time.monotonic() - mark
    finally:
        await core.aclose()
    clock["total"] = time.monotonic() - start
    return {
        "taste": judge.describe,
        "votes": votes,
        "before": before,
        "after": after,
        "run": {
            "status": str(outcome.status),
            "message": outcome.message,
            "metrics": outcome.metrics,
        },
        "seconds": {k: round(v, 1) for k, v in clock.items()},
        "load_after": _load(),
    }


def report(result: dict[str, Any]) -> None:
    before, after = result["before"], result["after"]
    print(f"\nhidden taste: {result['taste']}")
    print(f"ratings: 👍 {result['votes']['up']} / 👎 {result['votes']['down']}")
    print(f"held-out prompts, share liked: before {_interval(before['liked'], before['replies'])}")
    print(f"                               after  {_interval(after['liked'], after['replies'])}")
    print(f"mean words: before {before['mean_words']:.1f}, after {after['mean_words']:.1f}")
    print(f"run: {result['run']['status']}: {result['run']['message']}")
    metrics = result["run"]["metrics"]
    for key in sorted(k for k in metrics if "accuracy" in k or "nll" in k or "margin" in k):
        print(f"  {key}: {metrics[key]:.3f}")
    for phase, seconds in result["seconds"].items():
        print(f"  {phase}: {seconds:.0f} s")
    print(f"load average after: {result['load_after']}")


if __name__ == "__main__":
    arguments = _args()
    outcome = asyncio.run(main(arguments))
    report(outcome)
    if arguments.json:
        arguments.json.write_text(json.dumps(outcome, indent=2, ensure_ascii=False))
