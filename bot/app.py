"""Composition root: settings → data dir → database → model → services → adapters.

``build_core`` wires the services (start-up itself is ``bot.startup``), ``make_adapters`` builds
one adapter per configured platform of ``bot.settings.PLATFORMS`` (or the console), ``serve``
runs them. Heavy modules (torch, the platform SDKs) are imported lazily, only when needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from adapters.base import Adapter
from bot.chat.access import Access
from bot.chat.service import ChatService
from bot.commands.context import CommandContext
from bot.commands.router import CommandRouter
from bot.errors import StartupError
from bot.generation import Generator
from bot.learning.ab import ABTesting
from bot.learning.finetune import Finetuner
from bot.learning.periodic import Periodic
from bot.learning.schedule import Scheduler
from bot.learning.trainer_process import Trainer
from bot.learning.versions import AdapterVersions
from bot.learning.watcher import Watcher
from bot.outbox import Outbox
from bot.settings import PLATFORMS, Platform, Settings
from bot.startup import (
    InstanceLock,
    claim_roles,
    load_generator,
    open_adapter_files,
    open_repository,
    platform_roles,
    prepare_data_dir,
    wanted_roles,
)
from storage.db import is_sqlite
from storage.repository import Repository

if TYPE_CHECKING:
    from bot.web import Dashboard

ROLE_CHECK_S = 5.0  # how often a process sharing the database checks it still holds its roles
log = logging.getLogger(__name__)


@dataclass
class Core:
    """Everything an adapter needs, built once per process."""

    settings: Settings
    repo: Repository
    generator: Generator
    versions: AdapterVersions
    finetuner: Finetuner
    ab: ABTesting  # A/B tests: a sibling of the finetuner, which releases into them
    service: ChatService
    outbox: Outbox
    scheduler: Scheduler  # training by schedule; started by serve()
    watcher: Watcher  # new active versions and ended queued runs; started by serve()
    closers: list[Callable[[], None]] = field(default_factory=list)
    dashboard: Dashboard | None = None  # the web dashboard (``web.enabled``), started by serve
    adapters: list[Adapter] = field(default_factory=list)  # what serve_core runs (for /healthz)
    roles: frozenset[str] | None = None  # the serving roles held (None: all, one process)

    def holds(self, role: str) -> bool:
        """Whether this process serves ``role`` (``bot.startup.claim_roles``)."""
        return self.roles is None or role in self.roles

    async def aclose(self) -> None:
        """Stop the schedule and any training run, then close the model and the database."""
        await self.scheduler.stop()
        await self.watcher.stop()
        await self.finetuner.cancel()
        await self.generator.aclose()
        await self.repo.aclose()
        for close in self.closers:
            close()


async def build_core(
    settings: Settings,
    *,
    generator: Generator | None = None,
    model_dir: Path | None = None,
    trainer: Trainer | None = None,
    progress: bool = True,
    lock: bool = True,
) -> Core:
    """Wire the services. Tests pass their own generator (and model dir) to skip the real model."""
    instance = InstanceLock(prepare_data_dir(settings))
    files = await open_adapter_files(settings)  # before anything that needs closing
    if lock and is_sqlite(settings.database_url):  # PostgreSQL: a lock per role (serve)
        instance.acquire()
    try:
        repo = await open_repository(settings)
        if generator is None:
            generator, model_dir = await load_generator(settings, progress=progress)
    except BaseException:
        instance.release()
        raise
    versions = AdapterVersions(repo, generator, files)
    await versions.sync()
    directory = model_dir

    async def model_path() -> Path:
        if directory is None:
            raise ValueError("this generator has no model directory to train from")
        return directory

    ab = ABTesting(settings, repo, versions)
    finetuner = Finetuner(settings, repo, versions, model_path, trainer, ab=ab)
    outbox = Outbox(private_chats=[p.name for p in PLATFORMS if p.private == "chat"])
    access = Access(settings, repo)
    adapters: list[Adapter] = []
    dashboard = None
    if settings.web.enabled:
        from bot.webwiring import build_dashboard  # aiohttp.web and Jinja2: only when enabled

        dashboard = build_dashboard(settings, repo, generator, versions, ab, finetuner, adapters)
    commands = CommandContext(
        settings=settings,
        repo=repo,
        generator=generator,
        versions=versions,
        finetuner=finetuner,
        ab=ab,
        outbox=outbox,
        login_link=dashboard.issue_login_link if dashboard is not None else None,
        access=access,
    )
    service = ChatService(
        settings=settings,
        repo=repo,
        generator=generator,
        versions=versions,
        route=CommandRouter(commands),
        access=access,
    )
    scheduler = Scheduler(settings.schedule, repo, finetuner, outbox)
    return Core(
        settings,
        repo,
        generator,
        versions,
        finetuner,
        ab,
        service,
        outbox,
        scheduler,
        Watcher(settings, repo, versions, outbox),
        [instance.release],
        dashboard,
        adapters,
    )


def make_adapters(core: Core, mode: Literal["run", "chat"]) -> list[Adapter]:
    """The console for ``chat`` (or ``run`` with no platform token); else one adapter for each
    platform whose token is set, registered with the outbox."""
    adapters: list[Adapter] = []
    if mode == "run":
        for platform in PLATFORMS:
            roles = platform_roles(core.settings, platform.name)
            held = [role for role in roles if core.holds(role)]
            if held and len(held) < len(roles):  # shards split unevenly between processes
                raise StartupError(
                    f"this process holds {', '.join(held)} but another one holds "
                    f"{', '.join(sorted(set(roles) - set(held)))}: give each process its own "
                    "discord.shard_ids, with no shard in two processes"
                )
            if core.settings.platform(platform).configured and held == roles:
                adapters.append(_platform_adapter(core, platform))
    if not adapters:
        if not core.holds("console"):
            raise StartupError(
                "nothing left to serve here: another selftune process on this database holds "
                "every role this one could take (see serving.roles)"
            )
        from adapters.console import ConsoleAdapter

        adapters.append(ConsoleAdapter(core.service, charts_dir=core.settings.data_dir / "charts"))
    for adapter in adapters:
        core.outbox.register(adapter.platform, adapter.send)
    return adapters


def _platform_adapter(core: Core, platform: Platform) -> Adapter:
    """Import the platform's adapter (and with it its SDK) and build it on its section."""
    module, _, name = platform.adapter.partition(":")
    factory = getattr(importlib.import_module(module), name)
    built = factory(core.service, core.settings.platform(platform))
    if platform.private == "dm":
        # Admin output for a user (training progress after /finetune in a server) goes by DM.
        core.outbox.register_private(platform.name, built.send_private)
    adapter: Adapter = built
    return adapter


async def serve(settings: Settings, mode: Literal["run", "chat"]) -> None:
    """Run every adapter in one event loop until they end (console EOF) or a signal arrives."""
    core = await build_core(settings)
    try:
        if not is_sqlite(settings.database_url):  # several processes may serve: share roles
            console = mode == "chat" or not any(settings.platform(p).configured for p in PLATFORMS)
            wanted = wanted_roles(settings, console=console)
            core.roles = await claim_roles(settings, core.repo.coordination, wanted)
        adapters = make_adapters(core, mode)
    except BaseException:
        await core.aclose()
        raise
    await serve_core(core, adapters)


async def serve_core(core: Core, adapters: Sequence[Adapter]) -> None:
    """Run ``adapters`` in one TaskGroup, then close ``core``.

    When they all end by themselves (the console's input ended), a fine-tuning run still going
    is let finish, with its messages, before the core closes. SIGTERM stops at once, in either
    phase: the run is interrupted and the core closed cleanly.
    """
    log.info("serving on %s", ", ".join(a.platform for a in adapters))
    core.adapters[:] = adapters
    guard = _RoleGuard(core)
    try:
        await _start_dashboard(core)
        if core.holds("schedule"):
            core.scheduler.start()
        core.watcher.start()
        guard.start()
        with _SigtermStops() as sigterm:
            try:
                async with asyncio.TaskGroup() as group:
                    for adapter in adapters:
                        group.create_task(adapter.run(), name=adapter.platform)
                await _finish_training(core)
            except asyncio.CancelledError:
                guard.raise_if_lost()
                if not sigterm.received:
                    raise
                sigterm.uncancel()
                log.info("stopped by SIGTERM")
    finally:
        await guard.stop()
        if core.dashboard is not None:
            await core.dashboard.stop()
        await core.aclose()


class _RoleGuard:
    """Stops serving when this process no longer holds a role it serves: its locks went with a
    dropped database connection and another process took the role meanwhile (two schedules,
    two pollers otherwise). The start that follows takes what is free. Reconnecting takes the
    roles again when nobody took them (``Coordination.lost_roles``)."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._task = asyncio.current_task()
        self._periodic = Periodic("role-guard", lambda: ROLE_CHECK_S, self.check)
        self.lost: set[str] = set()

    def start(self) -> None:
        if self._core.roles is not None and self._core.repo.coordination.shared:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def check(self) -> None:
        lost = await self._core.repo.coordination.lost_roles() & set(self._core.roles or ())
        if lost and not self.lost and self._task is not None:
            self.lost = lost
            log.error("another process took the roles %s: stopping", ", ".join(sorted(lost)))
            self._task.cancel()

    def raise_if_lost(self) -> None:
        if self.lost and self._task is not None:
            self._task.uncancel()
            raise StartupError(
                f"this process lost the roles {', '.join(sorted(self.lost))} with its database "
                "connection, and another process took them; it stopped. Start it again: it "
                "takes the roles that are free."
            )


async def _start_dashboard(core: Core) -> None:
    """Serve the dashboard in this loop, before the adapters; a port in use is a start-up
    error that says which setting to change."""
    if core.dashboard is None:
        return
    web = core.settings.web
    try:
        await core.dashboard.start()
    except OSError as exc:
        raise StartupError(
            f"cannot serve the dashboard on {web.listen}:{web.port} ({exc.strerror or exc}). "
            "Set web.port (or web.listen) to a free one, or web.enabled = false."
        ) from None


async def _finish_training(core: Core) -> None:
    """Every adapter has ended: start no scheduled run, and let a running one finish (its
    progress and verdict still reach the chat that asked for it)."""
    await core.scheduler.stop()
    if core.finetuner.running:
        log.info("waiting for the fine-tuning run to finish before exiting (Ctrl-C stops it)")
        await core.finetuner.wait()


class _SigtermStops:
    """While entered, SIGTERM cancels the current task (where the loop can handle signals)."""

    def __init__(self) -> None:
        self.received = False
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> _SigtermStops:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGTERM, self._stop)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.remove_signal_handler(signal.SIGTERM)

    def uncancel(self) -> None:
        """The stop was handled: the task goes on to close the core, no longer cancelling."""
        if self._task is not None:
            self._task.uncancel()

    def _stop(self) -> None:
        self.received = True
        if self._task is not None:
            self._task.cancel()
