"""An A/B candidate whose files could not be fetched (the shared store away for a moment) is
tried again at the next look; one the model refuses is not (it would fail the same way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import VersionError
from bot.learning.versions import AdapterVersions
from bot.settings import Settings
from bot.types import AdapterVersion
from storage.abtests import ABStatus
from storage.blobs import AdapterStorageError
from tests.support.records import add_version
from tests.support.trainers import FakeTrainer, trainer_core


async def test_a_candidate_the_store_could_not_give_is_fetched_at_the_next_look(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await trainer_core(settings, FakeTrainer())
    try:
        candidate = await add_version(core.repo, tmp_path / "v0001")
        test = await core.repo.ab.start(candidate.version, None, 0.5, None)
        real = AdapterVersions.local_path
        failures = [AdapterStorageError("the bucket did not answer")]

        async def flaky(self: AdapterVersions, version: AdapterVersion) -> Path:
            if failures:
                raise failures.pop()
            return await real(self, version)

        monkeypatch.setattr(AdapterVersions, "local_path", flaky)
        await core.versions.sync()
        assert core.versions.candidate is None  # not yet: its chats get the live adapter
        await core.versions.sync()
        assert core.versions.candidate == candidate.version  # fetched at the next look

        async def refused(*_args: object, **_kwargs: object) -> None:
            raise VersionError("the model cannot serve it")

        other = await add_version(core.repo, tmp_path / "v0002")
        await core.repo.ab.finish(test.id, ABStatus.REPLACED, "replaced")
        await core.repo.ab.start(other.version, None, 0.5, None)
        monkeypatch.setattr(AdapterVersions, "load_candidate", refused)
        await core.versions.sync()
        monkeypatch.setattr(AdapterVersions, "load_candidate", _never)
        await core.versions.sync()  # refused by the model: not tried again
    finally:
        await core.aclose()


async def _never(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("a candidate the model refused was tried again")
