"""One run of bench/taste.py, in its own process, against one checkout's code (``PYTHONPATH``
names it: today's code or this branch): simulated users chat with the default model and rate
each sampled reply by a hidden taste, the real pipeline fine-tunes (Finetuner → trainer
subprocess → gate), and the run measures, on held-out prompts, the share of replies with the
taste before and after, and the damage: the NLL per token of the base model's own greedy replies
to neutral prompts under the base and under the new adapter.

    python bench/taste_run.py --taste short --seed 0 --json out.json [--reuse DIR]

``--save-data DIR`` keeps a copy of the rated database before training; ``--reuse DIR`` starts
from such a copy (the same ratings, so two codes are compared on the same data) and takes the
``before`` numbers from ``DIR/before.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # this checkout's bench package

from bench.common import tried_settings  # noqa: E402
from bench.taste_data import HELDOUT_TOPICS, TRAIN_TOPICS, Taste, prompts, taste, words  # noqa: E402

# The code under test: the checkout SELFTUNE_BENCH_CODE names (today's code), else this one.
sys.path.insert(0, os.environ.get("SELFTUNE_BENCH_CODE", str(HERE)))
from bot.app import Core, build_core  # noqa: E402
from bot.engine.generator import resolve_model  # noqa: E402

try:
    from bot.generation.template import chat_ids
except ModuleNotFoundError:  # today's code (19f157e) kept it in bot.engine.runtime
    from bot.engine.runtime import chat_ids  # type: ignore[no-redef,attr-defined,unused-ignore]
from bot.settings import Settings, load_settings  # noqa: E402
from bot.types import GenerationParams, Incoming, Reply, Turn, Vote  # noqa: E402

NEUTRAL = ["Hello! How are you today?", "What is the capital of France?",
           "Give me a tip for a rainy day.", "How do I boil an egg?",
           "What does a library do?", "Name three colours.",
           "Why is the sky blue?", "What is a good name for a dog?"]  # fmt: skip


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taste", default="short")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--ratings", type=int, default=200)
    parser.add_argument("--eval-prompts", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4, help="replies per held-out prompt")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument(
        "--corrections",
        type=float,
        default=0.0,
        help="share of 👎 replies a user also answers with /better: the reply they wanted",
    )
    parser.add_argument("--save-data", type=Path, default=None)
    parser.add_argument("--reuse", type=Path, default=None)
    parser.add_argument("--collect-only", action="store_true", help="stop after --save-data")
    parser.add_argument("--json", type=Path, required=True)
    return parser.parse_args()


def _settings(args: argparse.Namespace, data_dir: Path) -> Settings:
    base, _ = load_settings(None, tried_settings() | {"SELFTUNE_DATA_DIR": str(data_dir)})
    generation = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    training = base.training.model_copy(update={"seed": args.seed})
    return base.model_copy(
        update={
            "generation": base.generation.model_copy(update=generation),
            "chat": base.chat.model_copy(update={"user_messages_per_minute": 0}),
            "training": training,
        }
    )


async def _replies(core: Core, questions: list[str], params: GenerationParams) -> list[str]:
    system = core.settings.chat.system_prompt
    limit = asyncio.Semaphore(16)  # the engine batches up to 16 sequences

    async def one(question: str) -> str:
        async with limit:
            turns = [Turn("system", system), Turn("user", question)]
            return "".join([piece async for piece in core.generator.stream(turns, params)])

    return list(await asyncio.gather(*(one(q) for q in questions)))


async def measure(core: Core, questions: list[str], samples: int, judge: Taste) -> dict[str, Any]:
    """Share of sampled replies to ``questions`` that the taste likes (served adapter)."""
    params = core.service.default_params()
    replies = await _replies(core, [q for q in questions for _ in range(samples)], params)
    hits = sum(1 for r in replies if judge.likes(r))
    return {
        "liked": hits,
        "replies": len(replies),
        "rate": hits / len(replies),
        "mean_words": sum(words(r) for r in replies) / len(replies),
        "examples": replies[:2],
    }


async def simulate(
    core: Core,
    questions: list[str],
    users: int,
    judge: Taste,
    corrections: float = 0.0,
    seed: int = 0,
) -> dict[str, int]:
    """Users chat in their own private chats (a new conversation per question) and rate; a
    ``corrections`` share of the 👎 replies they also answer with /better (the taste's rewrite
    of the reply, stored as the /better command stores it)."""
    votes = {"up": 0, "down": 0, "corrections": 0}

    async def user(index: int) -> None:
        who = Incoming("bench", f"chat{index}", f"user{index}", f"User {index}", "")
        chance = random.Random(f"{seed}-{index}")
        for question in questions[index::users]:
            await core.repo.new_conversation(who.chat_key)
            items = [i async for i in core.service.respond(replace(who, text=question))]
            reply = items[-1]
            if not isinstance(reply, Reply) or reply.exchange_id is None:
                continue
            vote = Vote.UP if judge.likes(reply.text) else Vote.DOWN
            await core.service.rate(reply.exchange_id, who.user_key, vote)
            votes["up" if vote is Vote.UP else "down"] += 1
            wanted = judge.correction(reply.text) if vote is Vote.DOWN else None
            if wanted is not None and chance.random() < corrections:
                await core.repo.signals.correct(reply.exchange_id, who.user_key, wanted)
                votes["corrections"] += 1

    await asyncio.gather(*(user(i) for i in range(users)))
    return votes


def reply_nll(
    model_dir: Path, adapter: str | None, system: str, pairs: list[tuple[str, str]]
) -> float:
    """Mean NLL per token of each reply (and its end of turn) after its prompt, under the base
    or under ``adapter``: plain transformers + peft, the same for every checkout."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for question, reply in pairs:
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
            prompt = chat_ids(tokenizer, messages, add_generation_prompt=True)
            answer = tokenizer(reply.strip() + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :], reduction="sum")
            total, count = total + float(nll), count + len(answer)
    return total / count


async def before_phase(core: Core, args: argparse.Namespace, judge: Taste) -> dict[str, Any]:
    """The base model's taste share and greedy replies to the neutral prompts."""
    heldout = prompts(HELDOUT_TOPICS, args.eval_prompts, seed=1)
    greedy = replace(core.service.default_params(), temperature=0.0)
    return {
        "share": await measure(core, heldout, args.samples, judge),
        "neutral": list(zip(NEUTRAL, await _replies(core, NEUTRAL, greedy), strict=True)),
    }


async def rated(core: Core, args: argparse.Namespace, judge: Taste) -> tuple[Any, Any]:
    """The before numbers and the votes: measured and simulated now, or read from --reuse."""
    if args.reuse is not None:
        saved = json.loads((args.reuse / "before.json").read_text())
        return saved["before"], saved["votes"]
    before = await before_phase(core, args, judge)
    questions = prompts(TRAIN_TOPICS, args.ratings, args.seed)
    votes = await simulate(core, questions, args.users, judge, args.corrections, args.seed)
    if args.save_data is not None:
        shutil.copytree(core.settings.data_dir, args.save_data, dirs_exist_ok=True)
        (args.save_data / "before.json").write_text(json.dumps({"before": before, "votes": votes}))
    return before, votes


async def run(args: argparse.Namespace) -> dict[str, Any]:
    judge = taste(args.taste)
    data_dir = Path(tempfile.mkdtemp(prefix="selftune-taste-"))
    if args.reuse is not None:
        shutil.copytree(args.reuse, data_dir, dirs_exist_ok=True)
    clock: dict[str, float] = {}
    start = time.monotonic()
    core = await build_core(_settings(args, data_dir), progress=False)
    try:
        before, votes = await rated(core, args, judge)
        clock["chat and rate"] = time.monotonic() - start
        if args.collect_only:
            return {"taste": judge.name, "seed": args.seed, "votes": votes, "before": before}
        mark = time.monotonic()
        outcome = await core.finetuner.run(trigger="bench", requested_by="bench", notify=_quiet)
        clock["fine-tune to live"] = time.monotonic() - mark
        version = outcome.version
        if version is not None and core.versions.current != version:
            await core.versions.activate(version)  # measure it even if the gate held it back
        heldout = prompts(HELDOUT_TOPICS, args.eval_prompts, seed=1)
        after = await measure(core, heldout, args.samples, judge)
        record = await core.repo.adapters.get(version) if version is not None else None
        model_dir = resolve_model(core.settings.model, progress=False)
    finally:
        await core.aclose()
    clock["total"] = time.monotonic() - start
    return _result(args, judge, before, votes, after, outcome, record, model_dir, clock)


def _result(
    args: argparse.Namespace,
    judge: Taste,
    before: dict[str, Any],
    votes: dict[str, int],
    after: dict[str, Any],
    outcome: Any,
    record: Any,
    model_dir: Path | None,
    clock: dict[str, float],
) -> dict[str, Any]:
    nll: dict[str, float] = {}
    if record is not None and model_dir is not None:
        system = _settings(args, Path(tempfile.gettempdir())).chat.system_prompt
        pairs = [(str(q), str(a)) for q, a in before["neutral"]]
        try:
            nll["neutral_base"] = reply_nll(model_dir, None, system, pairs)
            nll["neutral_after"] = reply_nll(model_dir, record.path, system, pairs)
        except Exception as exc:  # keep the run's other numbers: they took long to get
            print(f"NLL check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    decision = outcome.decision
    return {
        "taste": judge.name,
        "seed": args.seed,
        "votes": votes,
        "before": before["share"]["rate"],
        "after": after["rate"],
        "mean_words": [before["share"]["mean_words"], after["mean_words"]],
        "status": str(outcome.status),
        "gate": decision.as_dict() if decision is not None else None,
        "metrics": outcome.metrics,
        "nll": nll,
        "seconds": {k: round(v, 1) for k, v in clock.items()},
        "examples_after": after["examples"],
    }


async def _quiet(_text: str) -> None:
    return None


if __name__ == "__main__":
    arguments = _args()
    result = asyncio.run(run(arguments))
    arguments.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
