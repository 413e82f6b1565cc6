"""Render time of the dashboard's pages over a big database: ``python bench/dashboard.py``.

Fills a temp SQLite database in bulk (100 000 messages by default: half users' messages, half
replies, each reply an exchange with its prompt; one in three rated; 12 adapter versions; 30
training runs over 60 days), logs in by a one-time link, and requests each main page several
times through aiohttp's client on 127.0.0.1. Prints the median (and the slowest) time per page.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert

from bench.common import QUESTIONS
from bot.learning.ab import ABTesting
from bot.learning.protocol import Event
from bot.learning.versions import AdapterVersions
from bot.settings import load_settings
from bot.web import Dashboard, GeneratorSnapshot, WebDeps
from migrations import upgrade_database
from storage.db import create_engine
from storage.models import (
    AdapterVersionRow,
    Chat,
    Exchange,
    Message,
    Rating,
    TrainingRunRow,
    User,
)
from storage.repository import Repository

ADMIN = "telegram:1"
PAGES = (
    "/",
    "/chats",
    "/chats?q=octopus",
    "/chats/telegram:-7",
    "/ratings",
    "/ratings?label=down&version=3",
    "/users",
    "/adapters",
    "/runs",
    "/runs/30",
    "/stats",
)


@dataclass
class Idle:
    """The finetuner, at rest."""

    progress: Event | None = None
    running: bool = False


def _rows(messages: int, chats: int, users: int, days: int) -> dict[type, list[dict[str, Any]]]:
    """Every row to insert, by table: ``messages`` / 2 exchanges spread over ``days``."""
    start = datetime.now(UTC) - timedelta(days=days)
    pairs = messages // 2
    rows: dict[type, list[dict[str, Any]]] = {
        User: [
            {"id": u, "key": f"telegram:{u}", "platform": "telegram", "name": f"user {u}"}
            for u in range(1, users + 1)
        ],
        Chat: [
            {"id": c, "key": f"telegram:-{c}", "platform": "telegram", "conversation": 1}
            for c in range(1, chats + 1)
        ],
        Message: [],
        Exchange: [],
        Rating: [],
    }
    for i in range(pairs):
        chat, user = i % chats + 1, i % users + 1
        when = start + timedelta(seconds=i * days * 86400 / pairs)
        question, answer = QUESTIONS[i % len(QUESTIONS)], f"Reply {i}: " + "words " * 30
        rows[Message] += [
            {
                "id": 2 * i + 1,
                "chat_id": chat,
                "user_id": user,
                "conversation": 1,
                "role": "user",
                "content": question,
                "user_name": f"user {user}",
                "created_at": when,
            },
            {
                "id": 2 * i + 2,
                "chat_id": chat,
                "user_id": None,
                "conversation": 1,
                "role": "assistant",
                "user_name": None,
                "content": answer,
                "created_at": when,
            },
        ]
        rows[Exchange].append(
            {
                "id": i + 1,
                "chat_id": chat,
                "user_id": user,
                "request_message_id": 2 * i + 1,
                "reply_message_id": 2 * i + 2,
                "completion": answer,
                "model_name": "bench",
                "prompt": [
                    {"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": question},
                ],
                "adapter_version": (i * 12 // pairs) or None,
                "params": {},
                "status": "done",
                "created_at": when,
                "finished_at": when,
            }
        )
        if i % 3 == 0:
            rows[Rating].append(
                {
                    "exchange_id": i + 1,
                    "user_id": user,
                    "value": 1 if i % 4 else -1,
                    "created_at": when,
                    "updated_at": when,
                }
            )
    return rows


def _learning_rows(days: int) -> dict[type, list[dict[str, Any]]]:
    start = datetime.now(UTC) - timedelta(days=days)
    runs = [
        {
            "id": r,
            "status": "succeeded",
            "trigger": "schedule",
            "adapter_version": r % 12 or 1,
            "message": "ok",
            "started_at": start + timedelta(days=2 * r),
            "finished_at": start + timedelta(days=2 * r, minutes=5),
            "report": {
                "metrics": {"losses": [1 / (1 + s / 10) for s in range(200)]},
                "data": {"ratings": 500, "dropped": {"empty reply": 3}},
            },
        }
        for r in range(1, 31)
    ]
    versions = [
        {
            "version": v,
            "path": f"/nowhere/v{v}",
            "parent": v - 1 or None,
            "status": "active" if v == 11 else "ready",
            "base_model": "bench",
            "exchange_ids": list(range(1, 2000)),
            "training_run_id": v,
            "metrics": {"kto_loss": 1 / v},
            "created_at": start + timedelta(days=5 * v),
            "hyperparams": {"gate": {"verdict": "pass", "reason": "better"}},
        }
        for v in range(1, 13)
    ]
    return {TrainingRunRow: runs, AdapterVersionRow: versions}


async def fill(repo: Repository, args: argparse.Namespace) -> None:
    rows = _rows(args.messages, args.chats, args.users, args.days) | _learning_rows(args.days)
    order = (User, Chat, Message, Exchange, Rating, TrainingRunRow, AdapterVersionRow)
    async with repo.engine.begin() as connection:
        for table in order:
            for at in range(0, len(rows[table]), 5000):
                await connection.execute(insert(table), rows[table][at : at + 5000])


async def measure(dashboard: Dashboard, repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    async with TestClient(TestServer(dashboard.app)) as client:
        link = urlsplit(dashboard.issue_login_link(ADMIN))
        token = unquote(link.query.removeprefix("t="))
        await client.post("/login/link", data={"t": token})
        for page in PAGES:
            assert (await client.get(page)).status == 200, page  # warm: caches, templates
            for _ in range(repeat):
                began = time.perf_counter()
                response = await client.get(page)
                await response.read()
                times.setdefault(page, []).append(time.perf_counter() - began)
    return times


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings, _ = load_settings(
            None, {"SELFTUNE_DATA_DIR": tmp, "SELFTUNE_ADMINS": f'["{ADMIN}"]'}
        )
        engine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await upgrade_database(engine)
        repo = Repository(engine)
        began = time.perf_counter()
        await fill(repo, args)
        print(f"stored {args.messages} messages in {time.perf_counter() - began:.1f} s")
        versions = AdapterVersions(repo, None)
        deps = WebDeps(
            repo,
            settings,
            versions,
            ABTesting(settings, repo, versions),
            Idle(),
            lambda: GeneratorSnapshot("bench"),
            lambda: {"telegram": True},
        )
        times = await measure(Dashboard(deps), args.repeat)
        await repo.aclose()
    print(f"{'page':34} {'median ms':>10} {'max ms':>8}")
    for page, samples in times.items():
        median, worst = statistics.median(samples) * 1000, max(samples) * 1000
        print(f"{page:34} {median:10.1f} {worst:8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chats", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=800)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
