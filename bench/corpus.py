"""Does one fine-tune learn a real preference corpus? chatterbot-corpus (PyPI), through the
product's own storage and training path, held-out preference accuracy before and after.

Each conversation's first line is a question, its second the true answer (👍); the same question
with another conversation's answer is the mismatched one (👎). Questions are split 80/20 (seeded,
by question text, so no held-out question is ever trained on): the 80 % are asked through the
ChatService by simulated users (a scripted generator gives the reply to be rated; the stored
exchange, curation and the trainer subprocess are the product's), ``Finetuner.run`` trains the
real default model as ``selftune train`` does, and the held-out 20 % are scored under the base
model and the new adapter: the share of (👍, 👎) pairs ranked right by per-token log-probability
(the gate's preference accuracy, all pairs) and of each question's own pair.

    pip download chatterbot-corpus --no-deps -d /tmp/corpus   # once; not a dependency
    flock /tmp/selftune-bench.lock .venv/bin/python bench/corpus.py --wheel /tmp/corpus/*.whl \\
        [--max-steps 120] [--json out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML, no stubs installed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import tried_settings
from bot.app import Core, build_core
from bot.engine.generator import resolve_model
from bot.generation import ScriptedGenerator
from bot.generation.template import chat_ids
from bot.learning.evaluation import RowScore, preference_accuracy
from bot.settings import Settings, load_settings
from bot.types import Incoming, Reply, Vote


@dataclass(frozen=True)
class Rated:
    question: str
    answer: str
    liked: bool


def load_corpus(wheel: Path, language: str = "english") -> list[tuple[str, str]]:
    """(question, true answer) of every distinct question in the wheel's YAML files (its first
    answer: a question asked again with another answer would be liked both ways)."""
    pairs: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if f"/data/{language}/" not in name or not name.endswith(".yml"):
                continue
            data = yaml.safe_load(archive.read(name).decode("utf-8"))
            for conversation in data.get("conversations") or []:
                if len(conversation) >= 2 and all(isinstance(t, str) for t in conversation[:2]):
                    pairs.setdefault(conversation[0].strip(), conversation[1].strip())
    return list(pairs.items())


def rate(pairs: list[tuple[str, str]], seed: int) -> tuple[list[Rated], list[Rated]]:
    """True answers 👍 and mismatched ones 👎, split 80/20 by question."""
    rng = random.Random(seed)
    answers = [a for _, a in pairs]
    rows = []
    for question, answer in pairs:
        other = rng.choice(answers)
        while other == answer:
            other = rng.choice(answers)
        rows += [Rated(question, answer, True), Rated(question, other, False)]
    questions = sorted({q for q, _ in pairs})
    rng.shuffle(questions)
    held = set(questions[: len(questions) // 5])
    return [r for r in rows if r.question not in held], [r for r in rows if r.question in held]


def _settings(data_dir: Path, max_steps: int | None) -> Settings:
    base, _ = load_settings(None, tried_settings() | {"SELFTUNE_DATA_DIR": str(data_dir)})
    training = base.training.model_copy(update={"max_steps": max_steps, "max_examples": 5000})
    return base.model_copy(
        update={
            "chat": base.chat.model_copy(update={"user_messages_per_minute": 0}),
            "training": training,
        }
    )


async def store(core: Core, rows: Sequence[Rated], users: int, answer: dict[str, str]) -> None:
    """Each row asked in a fresh conversation by one of ``users`` users and rated."""
    for index, item in enumerate(rows):
        who = Incoming("bench", f"chat{index % users}", f"user{index % users}", "User", "")
        await core.repo.new_conversation(who.chat_key)
        answer["next"] = item.answer
        replies = [i async for i in core.service.respond(replace(who, text=item.question))]
        reply = replies[-1]
        if isinstance(reply, Reply) and reply.exchange_id is not None:
            vote = Vote.UP if item.liked else Vote.DOWN
            await core.service.rate(reply.exchange_id, who.user_key, vote)


def heldout_scores(
    model_dir: Path, adapter: str | None, system: str, rows: Sequence[Rated]
) -> list[tuple[float, int]]:
    """(summed reply log-prob, reply tokens) of each held-out row under the base or adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out = []
    with torch.no_grad():
        for row in rows:
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": row.question},
            ]
            prompt = chat_ids(tokenizer, messages, add_generation_prompt=True)
            reply = tokenizer(row.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + reply])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            logp = -torch.nn.functional.cross_entropy(
                logits, ids[0, len(prompt) :], reduction="sum"
            )
            out.append((float(logp), len(reply)))
    return out


def accuracy(rows: Sequence[Rated], scores: list[tuple[float, int]]) -> dict[str, float]:
    """All-pairs preference accuracy (the gate's) and each question's own pair ranked right."""
    rowscores = [RowScore(r.liked, lp, n, lp) for r, (lp, n) in zip(rows, scores, strict=True)]
    per_token = [lp / max(1, n) for lp, n in scores]
    own = [per_token[i] > per_token[i + 1] for i in range(0, len(rows), 2)]  # (👍, 👎) in order
    return {"all_pairs": preference_accuracy(rowscores) or 0.0, "own_pair": sum(own) / len(own)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    train_rows, held = rate(load_corpus(args.wheel), args.seed)
    data_dir = Path(tempfile.mkdtemp(prefix="selftune-corpus-"))
    settings = _settings(data_dir, args.max_steps)
    model_dir = resolve_model(settings.model, progress=False)
    answer = {"next": ""}
    generator = ScriptedGenerator(lambda _turns, _adapter: answer["next"])
    core = await build_core(settings, generator=generator, model_dir=model_dir, progress=False)
    clock: dict[str, float] = {}
    try:
        mark = time.monotonic()
        await store(core, train_rows, args.users, answer)
        clock["store and rate"] = time.monotonic() - mark
        mark = time.monotonic()
        outcome = await core.finetuner.run(trigger="bench", requested_by="bench", notify=_quiet)
        clock["fine-tune"] = time.monotonic() - mark
        record = await core.repo.adapters.get(outcome.version) if outcome.version else None
    finally:
        await core.aclose()
    system = settings.chat.system_prompt
    before = accuracy(held, heldout_scores(model_dir, None, system, held))
    after = accuracy(held, heldout_scores(model_dir, record.path, system, held)) if record else {}
    return {
        "rows": {"train": len(train_rows), "heldout": len(held)},
        "settings tried": tried_settings(),
        "before": before,
        "after": after,
        "status": str(outcome.status),
        "gate": outcome.decision.as_dict() if outcome.decision else None,
        "metrics": outcome.metrics,
        "seconds": {k: round(v, 1) for k, v in clock.items()},
    }


async def _quiet(_text: str) -> None:
    return None


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="chatterbot_corpus-*.whl")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--users", type=int, default=20, help="ratings spread over (per-user cap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    result = asyncio.run(main(arguments))
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2))
    print(f"mfu {result['metrics'].get('mfu')}; load average after: {os.getloadavg()}")
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
