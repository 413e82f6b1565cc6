"""Adapter versions: which one serves, activating, rolling back. The database is the truth.

Every process that serves keeps its generator in step with the active version recorded in the
database, so ``selftune adapters activate 3`` or a ``selftune train`` run from a shell takes
effect in a running bot at its next reply.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from bot.generation import Generator
from bot.types import AdapterStatus, AdapterVersion
from storage.repository import Repository

log = logging.getLogger(__name__)


class VersionError(ValueError):
    """An activation or rollback that cannot be done; the message says why."""


def describe(version: int | None) -> str:
    return "the base model (no adapter)" if version is None else f"adapter v{version}"


class AdapterVersions:
    """Keeps the generator's adapter equal to the database's active version."""

    def __init__(self, repo: Repository, generator: Generator | None) -> None:
        self._repo = repo
        self._generator = generator
        self._lock = asyncio.Lock()
        self.current: int | None = None  # the version the generator serves
        self._by_path: dict[Path, int] = {}

    async def sync(self) -> int | None:
        """Swap in the database's active version if the generator serves another one."""
        active = await self._repo.active_adapter()
        wanted = active.version if active else None
        if wanted == self.current:
            return wanted
        async with self._lock:
            if wanted != self.current:
                await self._swap(active)
        return self.current

    async def _swap(self, version: AdapterVersion | None) -> None:
        if version is not None:
            self._by_path[Path(version.path)] = version.version
        if self._generator is not None:
            await self._generator.swap_adapter(Path(version.path) if version else None)
        self.current = version.version if version else None
        log.info("serving %s", describe(self.current))

    def serving(self) -> int | None:
        """The version new requests are served with now: read from the generator, which orders
        requests against swaps, so a reply records exactly the adapter that wrote it."""
        if self._generator is None:
            return self.current
        path = self._generator.active_adapter
        return None if path is None else self._by_path.get(Path(path), self.current)

    async def activate(self, version: int | None) -> AdapterVersion | None:
        """Serve ``version`` (None: the base model) from the next reply on."""
        target = None
        if version is not None:
            target = await self._repo.adapter_version(version)
            if target is None:
                raise VersionError(f"There is no adapter v{version}. See /adapters.")
            if not Path(target.path).is_dir():
                raise VersionError(f"Adapter v{version}'s files are missing ({target.path}).")
        async with self._lock:
            # Swap first: if the files are unusable the database keeps the working version.
            await self._swap(target)
            await self._repo.set_active_adapter(version)
        return target

    async def rollback(self, version: int | None = None) -> int | None:
        """Go back to ``version``, or to the parent of the version serving now."""
        if version is not None:
            await self.activate(version)
            return version
        active = await self._repo.active_adapter()
        if active is None:
            raise VersionError("Nothing to roll back: the base model is serving, no adapter.")
        parent = active.parent
        while parent is not None:
            candidate = await self._repo.adapter_version(parent)
            if candidate is not None and candidate.status is not AdapterStatus.REJECTED:
                break
            parent = candidate.parent if candidate else None
        await self.activate(parent)
        return parent
