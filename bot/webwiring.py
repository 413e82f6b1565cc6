"""The dashboard's view of the running bot: ``WebDeps`` built from the core's own objects.

Part of the composition root (``bot/app.py`` calls ``build_dashboard`` when ``web.enabled``);
``bot.web`` itself knows the core only through the protocols of ``bot/web/deps.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from adapters.base import Adapter
from bot.generation import Generator
from bot.learning.ab import ABTesting
from bot.learning.finetune import Finetuner
from bot.learning.versions import AdapterVersions
from bot.settings import Settings
from bot.web import Dashboard, GeneratorSnapshot, WebDeps
from storage.repository import Repository


def generator_snapshot(generator: Generator) -> Callable[[], GeneratorSnapshot]:
    """The generator now; the local engine's counters (``stats``) where it has them (a remote
    server's queue is its own: ``queued`` stays 0 there)."""

    def snapshot() -> GeneratorSnapshot:
        stats = getattr(generator, "stats", None)
        return GeneratorSnapshot(
            model_name=generator.model_name,
            tokens=int(getattr(stats, "tokens", 0)),
            running=int(getattr(stats, "active", 0)),
            queued=int(getattr(stats, "waiting", 0)),
        )

    return snapshot


def connected(adapters: Sequence[Adapter]) -> Callable[[], dict[str, bool]]:
    """Platform → connected, for ``/healthz`` and ``/metrics``: the adapters that say (their
    ``ready`` event, set while they receive updates); the console is always there."""

    def platforms() -> dict[str, bool]:
        states: dict[str, bool] = {}
        for adapter in adapters:
            ready = getattr(adapter, "ready", None)
            states[adapter.platform] = ready.is_set() if isinstance(ready, asyncio.Event) else True
        return states

    return platforms


def build_dashboard(
    settings: Settings,
    repo: Repository,
    generator: Generator,
    versions: AdapterVersions,
    ab: ABTesting,
    finetuner: Finetuner,
    adapters: Sequence[Adapter],
) -> Dashboard:
    """The dashboard (not started): ``adapters`` is the list ``serve_core`` fills."""
    deps = WebDeps(
        repo=repo,
        settings=settings,
        versions=versions,
        ab=ab,
        training=finetuner,
        generator=generator_snapshot(generator),
        adapters=connected(adapters),
    )
    return Dashboard(deps)
