"""The dashboard over a real migrated SQLite database, with the real AdapterVersions and
ABTesting (no generator: swaps are bookkeeping) and a stand-in finetuner."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bot.learning.ab import ABTesting
from bot.learning.protocol import Event
from bot.learning.versions import AdapterVersions
from bot.settings import Settings, load_settings
from bot.types import Turn, Vote
from bot.web import Dashboard, GeneratorSnapshot, WebDeps
from storage.repository import Repository
from tests.support.records import add_version

ADMIN = "telegram:1"
XSS = "<script>alert('x')</script>"


@dataclass
class FakeTraining:
    """The finetuner's live state, set by a test."""

    progress: Event | None = None
    running: bool = False


@dataclass
class World:
    """A seeded database and what the dashboard was built from."""

    repo: Repository
    settings: Settings
    versions: AdapterVersions
    training: FakeTraining
    platforms: dict[str, bool]
    dashboard: Dashboard
    exchanges: list[int]


def web_settings(tmp_path: Path, **web: str) -> Settings:
    env = {"SELFTUNE_DATA_DIR": str(tmp_path / "data"), "SELFTUNE_ADMINS": f'["{ADMIN}"]'}
    env |= {f"SELFTUNE_WEB__{key.upper()}": value for key, value in web.items()}
    loaded, _ = load_settings(None, env)
    loaded.data_dir.mkdir(parents=True, exist_ok=True)
    return loaded


async def exchange(
    repo: Repository,
    chat: str,
    user: str,
    name: str,
    text: str,
    reply: str,
    version: int | None = None,
) -> int:
    """A stored message and its answered exchange."""
    message = await repo.add_user_message(chat, user, name, text, None)
    turns = [Turn("system", "You are helpful."), Turn("user", text)]
    exchange_id = await repo.start_exchange(chat, user, message, turns, version, "tiny", {})
    await repo.finish_exchange(exchange_id, reply)
    return exchange_id


async def seed(repo: Repository, tmp_path: Path) -> list[int]:
    """Two chats, a hostile message, ratings, and three versions: v1 → v2 (active) → v3."""
    ids = [
        await exchange(repo, "telegram:10", "telegram:10", "Ann", "hello there", "Hi Ann!"),
        await exchange(repo, "telegram:10", "telegram:10", "Ann", XSS, f"You said {XSS}"),
        await exchange(repo, "discord:5", "discord:7", "Bob", "tell me a joke", "A joke.", 1),
    ]
    await repo.rate(ids[0], "telegram:10", Vote.UP)
    await repo.rate(ids[1], "telegram:10", Vote.DOWN)
    await repo.rate(ids[2], "discord:7", Vote.UP)
    gate = {"gate": {"verdict": "pass", "reason": "kto_loss improved"}}
    for version, parent in ((1, None), (2, 1), (3, 2)):
        folder = tmp_path / "adapters" / f"v{version}"
        folder.mkdir(parents=True)
        await add_version(
            repo,
            folder,
            parent=parent,
            hyperparams=gate,
            metrics={"kto_loss": 0.5 / version},
            exchange_ids=ids[:version],
        )
    await repo.adapters.set_active(2)
    return ids


async def build_world(repo: Repository, settings: Settings, tmp_path: Path) -> World:
    ids = await seed(repo, tmp_path)
    versions = AdapterVersions(repo, None)
    await versions.sync()
    training, platforms = FakeTraining(), {"telegram": True}
    deps = WebDeps(
        repo=repo,
        settings=settings,
        versions=versions,
        ab=ABTesting(settings, repo, versions),
        training=training,
        generator=lambda: GeneratorSnapshot("tiny-llama", tokens=42, running=1, queued=3),
        adapters=lambda: platforms,
    )
    dashboard = Dashboard(deps)
    return World(repo, settings, versions, training, platforms, dashboard, ids)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)
