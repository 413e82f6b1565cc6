"""Adapter versions: which one serves, activating, rolling back. The database is the truth.

Every process that serves keeps its generator in step with the active version recorded in the
database, so ``selftune adapters activate 3`` or a ``selftune train`` run from a shell takes
effect in a running bot at its next reply. The same goes for the candidate of a running A/B
test, served from the generator's second adapter slot to the chats assigned to it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from bot.errors import VersionError
from bot.generation import DEFAULT_SLOT, Generator
from bot.learning.ab_stats import CANDIDATE_SLOT, assigned
from bot.learning.adapter_files import AdapterFiles, AdapterStorageError, local_adapter
from bot.types import AdapterStatus, AdapterVersion
from storage.abtests import ABTest
from storage.repository import Repository

log = logging.getLogger(__name__)
_NOT_FOR_ROLLBACK = (AdapterStatus.REJECTED, AdapterStatus.RETIRED)


def describe(version: int | None) -> str:
    """A version as users read it: ``adapter vN``, or the base model for None."""
    return "the base model (no adapter)" if version is None else f"adapter v{version}"


class AdapterVersions:
    """Keeps the generator's adapter equal to the database's active version."""

    def __init__(
        self, repo: Repository, generator: Generator | None, files: AdapterFiles | None = None
    ) -> None:
        self._repo = repo
        self._generator = generator
        self._files = files  # None: every version's path is a folder on this machine
        self._lock = asyncio.Lock()
        self.current: int | None = None  # the version the generator serves
        self.candidate: int | None = None  # the A/B candidate in the second slot, if any
        self.test: ABTest | None = None  # the running A/B test, as of the last sync
        self._unservable: int | None = None  # a candidate the generator refused: not retried
        self._by_path: dict[Path, int] = {}

    async def sync(self) -> int | None:
        """Swap in the database's active version (and A/B candidate) if the generator serves
        other ones."""
        active = await self._repo.adapters.active()
        wanted = active.version if active else None
        if wanted != self.current:
            async with self._lock:
                if wanted != self.current:
                    await self._swap(active)
        await self._sync_candidate(await self._repo.ab.running())
        return self.current

    async def local_path(self, version: AdapterVersion) -> Path:
        """A folder on this machine with ``version``'s files: fetched from the shared adapter
        store first when the version was published there. Raises AdapterStorageError."""
        return await local_adapter(self._files, version)

    async def _swap(self, version: AdapterVersion | None) -> None:
        path = await self.local_path(version) if version is not None else None
        if version is not None and path is not None:
            self._by_path[path] = version.version
        if self._generator is not None:
            await self._generator.swap_lora(path)
        self.current = version.version if version else None
        log.info("serving %s", describe(self.current))

    async def _sync_candidate(self, test: ABTest | None) -> None:
        self.test = test
        wanted = test.candidate if test else None
        if wanted == self.candidate or (wanted is not None and wanted == self._unservable):
            return
        async with self._lock:
            version = await self._repo.adapters.get(wanted) if wanted is not None else None
            try:
                await self.load_candidate(version)
            except VersionError as exc:
                # A candidate must never break serving: its chats get the live adapter. Files
                # that could not be fetched (the store away for now) are tried again at the
                # next look; a candidate the model refuses is not.
                log.warning("A/B candidate v%s not served: %s", wanted, exc)
                if not isinstance(exc.__cause__, AdapterStorageError):
                    self._unservable = wanted

    async def load_candidate(self, version: AdapterVersion | None) -> None:
        """Put ``version`` in the candidate slot (None: empty it). Raises VersionError when the
        generator cannot serve a second adapter or the files are unusable."""
        try:
            path = await self.local_path(version) if version else None
        except AdapterStorageError as exc:
            raise VersionError(f"its files cannot be fetched: {exc}") from exc
        if self._generator is not None:
            try:
                await self._generator.swap_lora(path, slot=CANDIDATE_SLOT)
            except Exception as exc:  # the engine's errors (no second slot, bad files)
                raise VersionError(
                    f"the model cannot serve it next to the live one: {exc}"
                ) from exc
        if version is not None and path is not None:
            self._by_path[path] = version.version
        self.candidate = version.version if version else None
        self._unservable = None

    def slot_for(self, chat_key: str) -> str:
        """The adapter slot that answers ``chat_key``: the candidate's for chats an A/B test
        assigned to it (once it is loaded), else the default."""
        test = self.test
        loaded = test is not None and self.candidate == test.candidate
        if loaded and test is not None and assigned(chat_key, test.id, test.share):
            return CANDIDATE_SLOT
        return DEFAULT_SLOT

    def serving(self, slot: str = DEFAULT_SLOT) -> int | None:
        """The version new requests in ``slot`` are served with now: read from the generator,
        which orders requests against swaps, so a reply records exactly the adapter that wrote
        it."""
        fallback = self.candidate if slot == CANDIDATE_SLOT else self.current
        if self._generator is None:
            return fallback
        path = self._generator.slot_lora(slot)
        return None if path is None else self._by_path.get(Path(path), fallback)

    async def activate(self, version: int | None) -> AdapterVersion | None:
        """Serve ``version`` (None: the base model) from the next reply on."""
        target = None
        if version is not None:
            target = await self._repo.adapters.get(version)
            if target is None:
                raise VersionError(f"There is no adapter v{version}. See /adapters.")
            try:
                local = await self.local_path(target)
            except AdapterStorageError as exc:
                raise VersionError(f"Adapter v{version}'s files cannot be fetched: {exc}") from None
            if not local.is_dir():
                raise VersionError(f"Adapter v{version}'s files are missing ({target.path}).")
        async with self._lock:
            # Swap first: if the files are unusable the database keeps the working version.
            await self._swap(target)
            await self._repo.adapters.set_active(version)
        return target

    async def rollback(self, version: int | None = None) -> int | None:
        """Go back to ``version``, or to the parent of the version serving now."""
        if version is not None:
            await self.activate(version)
            return version
        active = await self._repo.adapters.active()
        if active is None:
            raise VersionError("Nothing to roll back: the base model is serving, no adapter.")
        parent = active.parent
        while parent is not None:
            candidate = await self._repo.adapters.get(parent)
            if candidate is not None and candidate.status not in _NOT_FOR_ROLLBACK:
                break
            parent = candidate.parent if candidate else None
        await self.activate(parent)
        return parent
