"""What many tests do first: register adapter versions, talk to the bot, rate its replies,
with only what a test cares about spelled out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.app import Core
from bot.generation.scripted import echo
from bot.types import AdapterVersion, Incoming, Reply, Turn, Vote
from storage.repository import Repository


class Script:
    """What the scripted model (the ``scripted`` fixture) says: ``text`` if a test sets it, else
    the ScriptedGenerator's own echo of the last turn."""

    def __init__(self) -> None:
        self.text: str | None = None

    def __call__(self, turns: Sequence[Turn], adapter: Path | None) -> str:
        return self.text if self.text is not None else echo(turns, adapter)


async def add_version(repo: Repository, path: str | Path, **fields: Any) -> AdapterVersion:
    """Register an adapter version at ``path``; every other field defaults to nothing."""
    defaults: dict[str, Any] = {
        "parent": None,
        "base_model": "m",
        "exchange_ids": [],
        "metrics": {},
        "hyperparams": {},
        "duration_s": None,
        "training_run_id": None,
    }
    return await repo.adapters.add(path=str(path), **(defaults | fields))


async def say(core: Core, who: Incoming, text: str) -> Reply:
    """Send ``text`` as ``who`` through the ChatService; the final reply (drafts skipped)."""
    items = [item async for item in core.service.respond(replace(who, text=text))]
    assert isinstance(items[-1], Reply), items[-1]
    return items[-1]


async def rated(core: Core, who: Incoming, text: str, vote: Vote = Vote.UP) -> int:
    """Send ``text`` as ``who`` and rate the answer ``vote`` as them; the exchange id."""
    reply = await say(core, who, text)
    assert reply.exchange_id is not None, reply
    await core.service.rate(reply.exchange_id, who.user_key, vote)
    return reply.exchange_id
