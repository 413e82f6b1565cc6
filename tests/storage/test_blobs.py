"""The adapter store: the same suite for the local directory and an S3 bucket (moto's server),
then what only a bucket can get wrong (a missing bucket, refused credentials, a bad copy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage.blobs import (
    AdapterFiles,
    AdapterStorageError,
    LocalAdapterFiles,
    S3Options,
    open_store,
)
from storage.blobs_s3 import S3AdapterFiles
from tests.storage.conftest import CREDENTIALS

Factory = Callable[[Path], AdapterFiles]  # a store seen from a process whose cache is there


def make_adapter(folder: Path, seed: int = 1) -> dict[str, bytes]:
    """An adapter folder as the trainer writes it (and one nested file); returns its files."""
    files = {
        "adapter_config.json": b'{"r": 8, "seed": %d}' % seed,
        "adapter_model.safetensors": bytes(range(256)) * (40 + seed),
        "tokenizer/special_tokens_map.json": b"{}",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def read_tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the cache's manifest copy, by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".selftune-manifest.json"
    }


@pytest.fixture(params=["local", "s3"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Stores on one shared place: a folder, or a bucket (made only for the S3 case)."""
    if request.param == "local":
        shared = tmp_path / "shared-adapters"
        return lambda cache: open_store(f"file://{shared}", cache)
    bucket = request.getfixturevalue("bucket")
    options = request.getfixturevalue("s3_options")
    return lambda cache: open_store(f"s3://{bucket}/team/adapters", cache, options)


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path / "trainer-output"
    return folder, make_adapter(folder)


async def test_a_published_adapter_is_fetched_by_a_fresh_process(
    factory: Factory, trained: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    folder, files = trained
    publisher = factory(tmp_path / "trainer-cache")
    await publisher.check()
    url = await publisher.publish(folder, 3)
    assert url.endswith("v0003") and await publisher.exists(3)
    assert not await publisher.exists(4)

    reader = factory(tmp_path / "serving-cache")  # another process: nothing cached
    fetched = await reader.fetch(3)
    assert read_tree(fetched) == files
    assert fetched.name == "v0003"


async def test_a_publish_that_dies_half_way_leaves_nothing_readable(
    factory: Factory,
    trained: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, files = trained
    publisher = factory(tmp_path / "trainer-cache")
    real = publisher._put_file  # type: ignore[attr-defined]
    calls: list[Any] = []

    def dies_on_the_second_file(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise ConnectionResetError("the network went away")
        real(*args)

    monkeypatch.setattr(publisher, "_put_file", dies_on_the_second_file)
    with pytest.raises(ConnectionResetError):
        await publisher.publish(folder, 1)
    assert len(calls) == 2  # one file was written before it died

    reader = factory(tmp_path / "serving-cache")
    assert not await reader.exists(1)
    with pytest.raises(AdapterStorageError, match="v1"):
        await reader.fetch(1)

    monkeypatch.undo()  # the retry publishes it whole
    await factory(tmp_path / "trainer-cache").publish(folder, 1)
    assert read_tree(await reader.fetch(1)) == files


async def test_a_republished_version_is_fetched_anew(
    factory: Factory, trained: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    folder, _ = trained
    reader = factory(tmp_path / "serving-cache")
    await factory(tmp_path / "a").publish(folder, 2)
    await reader.fetch(2)
    second = make_adapter(tmp_path / "second", seed=2)
    await factory(tmp_path / "b").publish(tmp_path / "second", 2)
    assert read_tree(await reader.fetch(2)) == second


async def test_delete(
    factory: Factory, trained: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    folder, _ = trained
    store = factory(tmp_path / "cache")
    await store.publish(folder, 5)
    await store.delete(5)
    assert not await factory(tmp_path / "other").exists(5)
    with pytest.raises(AdapterStorageError):
        await factory(tmp_path / "other").fetch(5)
    await store.delete(5)  # gone already: nothing to do


async def test_a_folder_that_is_no_adapter_is_not_published(
    factory: Factory, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterStorageError, match=r"no adapter_config\.json"):
        await factory(tmp_path / "cache").publish(tmp_path / "empty", 1)


async def test_the_local_store_is_todays_layout(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    store = open_store(str(root), tmp_path / "unused")
    assert isinstance(store, LocalAdapterFiles)
    in_place = root / "v0001"
    files = make_adapter(in_place)
    # The trainer renamed its output into place: publishing is a no-op, the path is the row's.
    assert await store.publish(in_place, 1) == str(in_place)
    assert await store.fetch(1) == in_place and read_tree(in_place) == files
    assert not list(root.glob("*.partial"))


async def test_the_s3_layout_and_the_cache(
    bucket: str,
    s3_options: S3Options,
    s3_client: Any,
    trained: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, files = trained
    store = open_store(f"s3://{bucket}/p", tmp_path / "cache", s3_options)
    assert await store.publish(folder, 7) == f"s3://{bucket}/p/v0007"
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    manifest = json.loads(
        s3_client.get_object(Bucket=bucket, Key="p/v0007/MANIFEST.json")["Body"].read()
    )
    assert sorted(keys) == sorted(
        ["p/v0007/MANIFEST.json"] + [f"p/v0007/{manifest['upload']}/{name}" for name in files]
    )
    assert manifest["files"]["adapter_config.json"]["size"] == len(files["adapter_config.json"])

    fetched = await store.fetch(7)
    assert isinstance(store, S3AdapterFiles)
    monkeypatch.setattr(store, "_download", _no_download)
    assert await store.fetch(7) == fetched  # the cached copy, not downloaded again


def _no_download(*args: Any) -> None:
    raise AssertionError("the cached copy should have been used")


async def test_a_file_that_does_not_match_its_manifest_is_refused(
    bucket: str,
    s3_options: S3Options,
    s3_client: Any,
    trained: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    folder, _ = trained
    store = open_store(f"s3://{bucket}", tmp_path / "cache", s3_options)
    await store.publish(folder, 1)
    manifest = json.loads(
        s3_client.get_object(Bucket=bucket, Key="v0001/MANIFEST.json")["Body"].read()
    )
    key = f"v0001/{manifest['upload']}/adapter_model.safetensors"
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    with pytest.raises(AdapterStorageError, match="does not match its manifest"):
        await open_store(f"s3://{bucket}", tmp_path / "fresh", s3_options).fetch(1)
    assert not (tmp_path / "fresh" / "v0001").exists()
    assert not list((tmp_path / "fresh").glob("*.partial"))


async def test_a_missing_bucket_is_named(s3_options: S3Options, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket/x", tmp_path, s3_options)
    with pytest.raises(AdapterStorageError, match="'no-such-bucket' does not exist"):
        await store.check()
    with pytest.raises(AdapterStorageError, match="does not exist"):
        await store.fetch(1)


@pytest.mark.usefixtures("moto_auth")
async def test_refused_credentials_are_said_without_the_secret(
    bucket: str, s3_options: S3Options, tmp_path: Path, trained: tuple[Path, dict[str, bytes]]
) -> None:
    store = open_store(f"s3://{bucket}", tmp_path, s3_options)
    attempts = (
        lambda: store.check(),
        lambda: store.publish(trained[0], 1),
        lambda: store.exists(1),
    )
    for attempt in attempts:
        with pytest.raises(AdapterStorageError, match="access denied") as caught:
            await attempt()
        assert CREDENTIALS["secret_access_key"] not in str(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_an_unreachable_endpoint_is_said(tmp_path: Path) -> None:
    from tests.support.net import free_port

    options = S3Options(
        endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1", **CREDENTIALS
    )
    store = open_store("s3://bucket", tmp_path, options)
    with pytest.raises(AdapterStorageError, match="cannot reach the bucket in s3://bucket"):
        await store.check()


@pytest.mark.parametrize("url", ["ftp://host/adapters", "s3://", "s3://key:secret@bucket/p"])
def test_a_bad_url_is_refused_without_echoing_it(url: str, tmp_path: Path) -> None:
    with pytest.raises(AdapterStorageError, match="not supported") as caught:
        open_store(url, tmp_path)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b"])
def test_a_manifest_cannot_name_a_file_outside_the_adapter(name: str) -> None:
    from storage.blobs import safe_relative

    with pytest.raises(AdapterStorageError, match="outside"):
        safe_relative(name)
