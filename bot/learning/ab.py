"""Starting, reading, promoting and retiring A/B tests (the /ab command and the release step).

The state lives in the database (``repo.ab``), so every serving process follows it at its next
reply through AdapterVersions.sync; this service only changes it.
"""

from __future__ import annotations

from bot.errors import VersionError
from bot.learning.ab_stats import Comparison, compare, describe
from bot.learning.versions import AdapterVersions
from bot.learning.versions import describe as describe_version
from bot.settings import Settings
from bot.types import AdapterStatus
from storage.abtests import ABStatus, ABTest
from storage.repository import Repository


class ABTesting:
    """A/B tests of adapter versions."""

    def __init__(self, settings: Settings, repo: Repository, versions: AdapterVersions) -> None:
        self._settings = settings
        self._repo = repo
        self._versions = versions

    async def start(self, version: int, share: float | None, started_by: str | None) -> str:
        """Serve ``version`` to ``share`` of the chats (default: ``ab.share``, else 10%).
        A running test is replaced. Raises VersionError when it cannot be done."""
        share = share if share is not None else (self._settings.ab.share or 0.1)
        if not 0 < share < 1:
            raise VersionError("The share of chats is a number between 0 and 1, e.g. 0.2.")
        target = await self._repo.adapters.get(version)
        if target is None:
            raise VersionError(f"There is no adapter v{version}. See /adapters.")
        await self._versions.sync()
        if version == self._versions.current:
            raise VersionError(f"v{version} already serves every chat; nothing to compare.")
        await self._versions.load_candidate(target)  # first: fails if the engine cannot
        running = await self._repo.ab.running()
        if running is not None:
            await self._repo.ab.finish(running.id, ABStatus.REPLACED, f"replaced by v{version}")
        test = await self._repo.ab.start(version, self._versions.current, share, started_by)
        await self._versions.sync()
        return (
            f"A/B test #{test.id} started: v{version} serves {100 * share:.0f}% of chats, "
            f"the others get {describe_version(test.control)}. /ab shows how each does."
        )

    async def status(self) -> str | None:
        """The running test and its comparison; None when no test runs."""
        test = await self._repo.ab.running()
        if test is None:
            return None
        return describe(test, await self._comparison(test), self._settings.ab.alpha)

    async def promote(self) -> str:
        """Make the candidate live for every chat and end the test."""
        test = await self._running()
        summary = describe(test, await self._comparison(test), self._settings.ab.alpha)
        await self._versions.activate(test.candidate)
        await self._repo.ab.finish(test.id, ABStatus.PROMOTED, summary)
        await self._versions.sync()
        return f"Promoted: v{test.candidate} now serves every chat.\n{summary}"

    async def retire(self) -> str:
        """End the test and take the candidate out of use."""
        test = await self._running()
        summary = describe(test, await self._comparison(test), self._settings.ab.alpha)
        await self._repo.adapters.set_status(test.candidate, AdapterStatus.RETIRED)
        await self._repo.ab.finish(test.id, ABStatus.RETIRED, summary)
        await self._versions.sync()
        return (
            f"Retired: v{test.candidate} serves no chat any more; every chat gets "
            f"{describe_version(self._versions.current)}.\n{summary}"
        )

    async def _running(self) -> ABTest:
        test = await self._repo.ab.running()
        if test is None:
            raise VersionError("No A/B test is running. /ab start N [share] starts one.")
        return test

    async def _comparison(self, test: ABTest) -> Comparison:
        candidate, control = await self._repo.ab.votes(test.started_at, test.candidate)
        return compare(candidate, control)
