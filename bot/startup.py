"""Start-up: the data dir, the instance lock, the database, the roles, the model.

The instance lock: on SQLite one serving process per data dir (``InstanceLock``, a file lock);
on PostgreSQL several processes serve together and each exclusive role (``console``,
``schedule``, ``telegram-polling``, ``discord``…) is held by one of them (``claim_roles``: an
advisory lock the database releases when its holder exits or crashes).

Used by the composition root (``bot.app``) and by the subcommands that do not serve
(``bot.cli.maintenance``). torch is imported only inside ``load_generator``, and only for
``backend.kind = "local"`` with the transformers engine (``model.engine``: ``auto`` picks it
where a GPU is).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.errors import ModelLoadError, StartupError
from bot.generation import Generator
from bot.learning.adapter_files import AdapterFiles, AdapterStorageError, adapter_files
from bot.settings import PLATFORMS, Settings, is_exclusive
from migrations import upgrade_database
from storage.coordination import Coordination, lock_id
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
        """Take the lock (non-blocking) and write this pid into the lock file for the next one."""
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
        """Let the next process serve from this data dir."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def platform_roles(settings: Settings, platform: str) -> list[str]:
    """The roles that serve ``platform``: Telegram's depends on how its updates come; a
    sharded Discord (a number ``shard_count``) takes one role per shard it serves, so
    processes that split the shards between them do not take each other's role."""
    if platform == "telegram":
        return [f"telegram-{settings.telegram.mode}"]
    count = settings.discord.shard_count if platform == "discord" else None
    if isinstance(count, int):
        ids = settings.discord.shard_ids or list(range(count))
        return [f"discord-shard-{shard}" for shard in ids]
    return [platform]


def wanted_roles(settings: Settings, *, console: bool) -> list[str]:
    """The roles this process's configuration serves (``serving.roles`` when set): the
    schedule, each configured platform, and the console when it is what serves."""
    if settings.serving.roles:
        return list(settings.serving.roles)
    roles = ["schedule"]
    for platform in PLATFORMS:
        if settings.platform(platform).configured:
            roles += platform_roles(settings, platform.name)
    if console:
        roles.append("console")
    return roles


async def claim_roles(
    settings: Settings, coordination: Coordination, wanted: list[str]
) -> frozenset[str]:
    """Take ``wanted``; an exclusive role another process holds fails start-up or is left
    out (``serving.on_taken``), said either way."""
    held: set[str] = set()
    for role in wanted:
        if not is_exclusive(role) or await coordination.try_role(role):
            held.add(role)
            continue
        if settings.serving.on_taken == "fail":
            raise StartupError(
                f"another selftune process on this database holds the role {role!r}. Stop it, "
                "or leave the role out of serving.roles (or set serving.when_taken = 'skip')."
            )
        log.warning("running without the role %r: another selftune process holds it", role)
    log.info("serving roles: %s", ", ".join(sorted(held)) or "none")
    return frozenset(held)


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` still exists (a training run's, for runs left marked running)."""
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
        before = await _upgrade_alone(engine)
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


async def open_adapter_files(settings: Settings) -> AdapterFiles:
    """The adapter store (``storage.adapters_url``), checked: a bucket that does not exist or
    credentials it refuses stop the start with what to fix, not the first swap later."""
    try:
        files = adapter_files(settings)
        await files.check()
    except AdapterStorageError as exc:
        raise StartupError(str(exc)) from None
    if files.url != str(settings.adapters_dir):
        log.info("adapters are published to %s", files.url)
    return files


async def _upgrade_alone(engine: AsyncEngine) -> str | None:
    """Migrate; on PostgreSQL one process at a time (several may start together), the others
    waiting on an advisory lock and then finding nothing left to do."""
    if engine.dialect.name != "postgresql":
        return await upgrade_database(engine)
    key = {"key": lock_id("migrate", "schema")}
    async with engine.connect() as guard:
        await guard.execute(text("SELECT pg_advisory_lock(:key)"), key)
        try:
            return await upgrade_database(engine)
        finally:
            await guard.execute(text("SELECT pg_advisory_unlock(:key)"), key)


async def load_generator(settings: Settings, *, progress: bool = True) -> tuple[Generator, Path]:
    """The configured generator and the directory of its model (training loads it from there).

    ``backend.kind = "local"``: the transformers generator (imports torch), or with
    ``model.engine = "llama.cpp"`` the llama.cpp one (no torch). ``"openai"``: an
    OpenAI-compatible server generates; the local model directory is still resolved, for
    training and for counting tokens with the same tokenizer.
    """
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
        auto = settings.model.engine == "auto"
        source = await resolve_model_dir(settings, progress=progress) if auto else None
        if local_engine(settings.model.engine, settings.model.device, source) == "llama.cpp":
            from bot.ggml.generator import LlamaCppGenerator

            llama = await LlamaCppGenerator.load(settings.model, settings.lora, progress=progress)
            return llama, llama.model_dir
        from bot.engine.generator import TransformersGenerator

        generator = await TransformersGenerator.load(
            settings.model, settings.lora, progress=progress
        )
    except ModelLoadError as exc:
        raise StartupError(str(exc)) from None
    return generator, generator.model_dir


def local_engine(engine: str, device: str, model_dir: Path | None = None) -> str:
    """The engine ``model.engine`` names; ``auto``: llama.cpp on a CPU (its kernels decode
    about twice as fast there, bench/serving.py), transformers where a GPU is asked for or, with
    ``device = "auto"``, visible (torch is imported only to ask when a GPU driver is there), or
    where the model in ``model_dir`` cannot be converted to GGUF (not a llama)."""
    if engine != "auto":
        return engine
    picked = _auto_device_engine(device)
    if picked == "llama.cpp" and model_dir is not None:
        from bot.ggml.convert import unsupported

        if (why := unsupported(model_dir)) is not None:
            log.info("model.engine auto: transformers, as llama.cpp cannot serve it: %s", why)
            return "transformers"
    return picked


def _auto_device_engine(device: str) -> str:
    if device.startswith(("cuda", "mps")):
        return "transformers"
    if device == "auto" and Path("/dev/nvidiactl").exists():
        from bot.engine.runtime import pick_device  # torch, in its zone

        if pick_device("auto").type == "cuda":
            return "transformers"
    return "llama.cpp"


async def resolve_model_dir(settings: Settings, *, progress: bool = True) -> Path:
    """Only the model directory (conversion cached), for training without serving."""
    from bot.generation.source import resolve_model

    try:
        return await asyncio.to_thread(resolve_model, settings.model, progress=progress)
    except ModelLoadError as exc:
        raise StartupError(str(exc)) from None
