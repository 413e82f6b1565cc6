"""Composition root: settings → data dir → database → model → services → adapters.

Heavy modules (torch, the platform SDKs) are imported here lazily, only when needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from adapters.base import Adapter
from bot.chat.service import ChatService
from bot.errors import StartupError
from bot.generation import Generator
from bot.learning.finetune import Finetuner
from bot.learning.schedule import Scheduler
from bot.learning.trainer_process import Trainer
from bot.learning.versions import AdapterVersions
from bot.outbox import Outbox
from bot.settings import Settings
from migrations import upgrade_database
from storage.db import create_engine
from storage.repository import Repository

log = logging.getLogger(__name__)


def prepare_data_dir(settings: Settings) -> Path:
    """Create the data dir if needed and check that it is writable."""
    data = settings.data_dir.expanduser()
    try:
        data.mkdir(parents=True, exist_ok=True)
        (data / "adapters").mkdir(exist_ok=True)
        probe = data / ".write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"data dir {data} is not usable ({exc.strerror or exc}). Set data_dir in the config "
            "or SELFTUNE_DATA_DIR to a writable directory."
        ) from None
    # A trainer killed mid-run leaves a *.partial folder; it was never registered: remove it.
    for partial in (data / "adapters").glob("*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    return data


class InstanceLock:
    """One serving process per data dir: a second one is told who holds it, not silently run."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "selftune.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StartupError(
                f"another selftune process (pid {holder}) is already serving from "
                f"{self.path.parent}. Stop it first, or give this one its own data_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def open_repository(settings: Settings) -> Repository:
    """Connect and apply pending migrations."""
    engine = create_engine(settings.database_url, echo=settings.database.echo)
    try:
        before = await upgrade_database(engine)
    except Exception as exc:
        await engine.dispose()
        raise StartupError(f"cannot open the database ({type(exc).__name__}: {exc})") from None
    if before is None:
        log.info("database created")
    repo = Repository(engine)
    stale = await repo.runs.interrupt_stale(pid_alive)
    if stale:
        log.warning("%d training run(s) had been interrupted; marked as such", stale)
    return repo


async def load_generator(settings: Settings, *, progress: bool = True) -> tuple[Generator, Path]:
    """The configured generator and the directory of its model (training loads it from there).

    ``backend.kind = "local"``: the transformers generator (imports torch). ``"openai"``: an
    OpenAI-compatible server generates; the local model directory is still resolved, for
    training and for counting tokens with the same tokenizer.
    """
    from bot.errors import ModelLoadError

    try:
        if settings.backend.kind == "openai":
            from bot.generation.openai_api import OpenAIGenerator

            model_dir = await resolve_model_dir(settings, progress=progress)
            remote = await OpenAIGenerator.connect(
                settings.backend,
                settings.model,
                model_dir=model_dir,
                adapters_dir=settings.adapters_dir,
            )
            return remote, model_dir
        from bot.engine.generator import TransformersGenerator

        generator = await TransformersGenerator.load(
            settings.model, settings.lora, progress=progress
        )
    except ModelLoadError as exc:
        raise StartupError(str(exc)) from None
    return generator, generator.model_dir


async def resolve_model_dir(settings: Settings, *, progress: bool = True) -> Path:
    """Only the model directory (conversion cached), for training without serving."""
    from bot.errors import ModelLoadError
    from bot.generation.source import resolve_model

    try:
        return await asyncio.to_thread(resolve_model, settings.model, progress=progress)
    except ModelLoadError as exc:
        raise StartupError(str(exc)) from None


@dataclass
class Core:
    """Everything an adapter needs, built once per process."""

    settings: Settings
    repo: Repository
    generator: Generator
    versions: AdapterVersions
    finetuner: Finetuner
    service: ChatService
    outbox: Outbox
    scheduler: Scheduler  # training by schedule; started by serve()
    closers: list[Callable[[], None]] = field(default_factory=list)

    async def aclose(self) -> None:
        await self.scheduler.stop()
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
    data_dir = prepare_data_dir(settings)
    instance = InstanceLock(data_dir)
    if lock:
        instance.acquire()
    try:
        repo = await open_repository(settings)
        if generator is None:
            generator, model_dir = await load_generator(settings, progress=progress)
    except BaseException:
        instance.release()
        raise
    versions = AdapterVersions(repo, generator)
    await versions.sync()
    directory = model_dir

    async def model_path() -> Path:
        if directory is None:
            raise ValueError("this generator has no model directory to train from")
        return directory

    finetuner = Finetuner(settings, repo, versions, model_path, trainer)
    outbox = Outbox()
    service = ChatService(
        settings=settings,
        repo=repo,
        generator=generator,
        versions=versions,
        finetuner=finetuner,
        outbox=outbox,
    )
    scheduler = Scheduler(settings.schedule, repo, finetuner, outbox)
    return Core(
        settings,
        repo,
        generator,
        versions,
        finetuner,
        service,
        outbox,
        scheduler,
        [instance.release],
    )


def make_adapters(core: Core, mode: Literal["run", "chat"]) -> list[Adapter]:
    """The console for ``chat`` (or ``run`` with no platform token); else each configured one."""
    settings = core.settings
    adapters: list[Adapter] = []
    if mode == "run" and settings.telegram.token is not None:
        from adapters.telegram.adapter import TelegramAdapter

        adapters.append(TelegramAdapter(core.service, settings.telegram))
    if mode == "run" and settings.discord.token is not None:
        from adapters.discord.adapter import DiscordAdapter

        discord_adapter = DiscordAdapter(core.service, settings.discord)
        # Admin output for a user (training progress after /finetune in a server) goes by DM.
        core.outbox.register_private(discord_adapter.platform, discord_adapter.send_private)
        adapters.append(discord_adapter)
    if not adapters:
        from adapters.console import ConsoleAdapter

        adapters.append(ConsoleAdapter(core.service, charts_dir=settings.data_dir / "charts"))
    for adapter in adapters:
        core.outbox.register(adapter.platform, adapter.send)
    return adapters


async def serve(settings: Settings, mode: Literal["run", "chat"]) -> None:
    """Run every adapter in one event loop until they end (console EOF) or a signal arrives."""
    core = await build_core(settings)
    adapters = make_adapters(core, mode)
    names = ", ".join(a.platform for a in adapters)
    log.info("serving on %s", names)
    core.scheduler.start()
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if main is not None:
            main.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        async with asyncio.TaskGroup() as group:
            for adapter in adapters:
                group.create_task(adapter.run(), name=adapter.platform)
    except asyncio.CancelledError:
        if not terminated:
            raise
        log.info("stopped by SIGTERM")
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        await core.aclose()
