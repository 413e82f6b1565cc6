"""Adapters in shared storage, through the real core: a fine-tuning run publishes its adapter to
an S3 bucket (moto's server) and the version row records its URL; another serving process, with
its own data dir and an empty cache, fetches that version before it swaps it in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.app import build_core
from bot.cli.trainer import build_worker
from bot.errors import StartupError, VersionError
from bot.generation import DEFAULT_SLOT, ScriptedGenerator
from bot.learning.adapter_files import local_adapter
from bot.learning.versions import AdapterVersions
from bot.settings import Settings, StorageSettings
from bot.types import AdapterStatus, AdapterVersion, Incoming, RunStatus, Vote
from storage.blobs import S3Options
from tests.storage.conftest import CREDENTIALS
from tests.support.records import rated, say
from tests.support.trainers import FakeTrainer, trained_core, trainer_core


def _on_bucket(settings: Settings, bucket: str, options: S3Options, data_dir: Path) -> Settings:
    storage = StorageSettings(
        adapters_url=f"s3://{bucket}/adapters",
        endpoint_url=options.endpoint_url,
        region=options.region,
        **CREDENTIALS,  # pydantic makes the secret str a SecretStr
    )
    return settings.model_copy(update={"storage": storage, "data_dir": data_dir})


ME = Incoming("console", "local", "local", "Ann", "")


async def _quiet(text: str) -> None:
    pass


async def test_a_trained_adapter_lands_in_the_bucket_and_a_fresh_process_serves_it(
    settings: Settings, bucket: str, s3_options: S3Options, s3_client: Any, tmp_path: Path
) -> None:
    trainer_side = _on_bucket(settings, bucket, s3_options, tmp_path / "trainer-data")
    core = await trained_core(trainer_side, "telegram")
    try:
        outcome = await core.finetuner.run(trigger="cli", requested_by=None, notify=_quiet)
        assert outcome.version == 1
        row = await core.repo.adapters.get(1)
        assert row is not None and row.status is AdapterStatus.ACTIVE
        assert row.path == f"s3://{bucket}/adapters/v0001"
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert "adapters/v0001/MANIFEST.json" in keys
        assert any(k.endswith("/adapter_config.json") for k in keys)
        database = trainer_side.database_url
    finally:
        await core.aclose()

    # A second serving process: same database and bucket, its own (empty) data dir.
    serving_side = _on_bucket(settings, bucket, s3_options, tmp_path / "serving-data")
    serving_side = serving_side.model_copy(
        update={"database": settings.database.model_copy(update={"url": database})}
    )
    generator = ScriptedGenerator()
    other = await build_core(serving_side, generator=generator, progress=False, lock=False)
    try:
        served = generator.slot_lora(DEFAULT_SLOT)
        assert served == serving_side.adapters_dir / "v0001"
        assert (served / "adapter_config.json").is_file()
        assert other.versions.serving() == 1
    finally:
        await other.aclose()


async def test_a_process_without_the_bucket_is_told_so(
    settings: Settings, bucket: str, s3_options: S3Options, tmp_path: Path
) -> None:
    trainer_side = _on_bucket(settings, bucket, s3_options, tmp_path / "data")
    core = await trained_core(trainer_side, "telegram")
    try:
        await core.finetuner.run(trigger="cli", requested_by=None, notify=_quiet)
        row = await core.repo.adapters.get(1)
        assert row is not None
        alone = AdapterVersions(core.repo, None)  # a process with no store for URLs
        with pytest.raises(VersionError, match="point it at the same store"):
            await alone.activate(1)
    finally:
        await core.aclose()


async def test_a_missing_bucket_stops_the_start_with_what_to_fix(
    settings: Settings, s3_options: S3Options, tmp_path: Path
) -> None:
    wrong = _on_bucket(settings, "not-made", s3_options, tmp_path / "data")
    with pytest.raises(StartupError, match="'not-made' does not exist") as caught:
        await build_core(wrong, generator=ScriptedGenerator(), progress=False, lock=False)
    assert CREDENTIALS["secret_access_key"] not in str(caught.value)


async def test_rows_written_before_shared_storage_are_folders(tmp_path: Path) -> None:
    old = AdapterVersion(1, str(tmp_path / "v0001"), None, datetime.now(UTC), AdapterStatus.ACTIVE)
    assert await local_adapter(None, old) == tmp_path / "v0001"
    as_url = replace(old, path=f"file://{tmp_path}/v0001")
    assert await local_adapter(None, as_url) == tmp_path / "v0001"


async def test_a_trainer_worker_publishes_to_the_bucket_and_serving_swaps_it_in(
    settings: Settings, bucket: str, s3_options: S3Options, tmp_path: Path
) -> None:
    """The README's third setup: /finetune only queues, `selftune trainer` (its wiring,
    bot.cli.trainer.build_worker) trains, publishes to the bucket and puts the version live
    (a second run fetches the serving adapter back from the bucket), and the serving process
    swaps it in by itself."""
    queue = settings.training.model_copy(update={"runner": "queue"})
    serving_side = _on_bucket(settings, bucket, s3_options, tmp_path / "serving")
    serving_side = serving_side.model_copy(
        update={"training": queue, "gate": settings.gate.model_copy(update={"enabled": False})}
    )
    core = await trainer_core(serving_side, FakeTrainer())
    worker_side = serving_side.model_copy(update={"data_dir": tmp_path / "worker"})
    try:
        for round_ in (1, 2):
            await rated(core, ME, f"hello {round_}", Vote.UP)
            assert (await say(core, ME, "/finetune")).text.startswith(f"Queued as run #{round_}")
            worker = await build_worker(worker_side, core.repo, FakeTrainer(), host="gpu-box")
            outcome = await worker.once()
            assert outcome is not None and outcome.status is RunStatus.SUCCEEDED, outcome
            row = await core.repo.adapters.get(round_)
            assert row is not None and row.status is AdapterStatus.ACTIVE
            assert row.path == f"s3://{bucket}/adapters/v{round_:04d}"
            await core.watcher.tick()
            assert core.versions.current == round_
    finally:
        await core.aclose()
