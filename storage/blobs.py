"""Adapter files in a store: one interface, a local directory or an S3 bucket (``blobs_s3``).

A version's files are published complete-then-publish, so a reader never sees a partial adapter:
the local store copies into a ``*.partial`` folder and renames it into place (today's layout,
``<root>/vNNNN``); the S3 store uploads every file under a fresh upload prefix, then writes the
version's manifest last (the manifest *is* the publication). Readers fetch by version: the
local store hands out its folder, the S3 store downloads into a local cache, checked against
the manifest's sizes and digests, and reuses it while the manifest is unchanged. No torch.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from bot.errors import LoraError

MANIFEST = "MANIFEST.json"
CACHE_MARK = ".selftune-manifest.json"  # the manifest a cached copy was downloaded from


class AdapterStorageError(LoraError):
    """The adapter store cannot be used, or has no complete copy of a version; the message says
    which store and why, never a credential."""


class AdapterFiles(Protocol):
    """Where adapter versions are published and fetched from."""

    url: str  # the store, as the operator configured it (no credentials)

    async def publish(self, local_dir: Path, version: int) -> str:
        """Make ``local_dir``'s files version ``version``, atomically; returns its URL."""
        ...

    async def fetch(self, version: int) -> Path:
        """A local folder with version ``version``'s files (downloaded when needed)."""
        ...

    async def delete(self, version: int) -> None:
        """Remove version ``version`` (nothing to do when it is not there)."""
        ...

    async def exists(self, version: int) -> bool:
        """Whether version ``version`` is published completely."""
        ...

    async def check(self) -> None:
        """Raise AdapterStorageError when the store cannot be reached or used."""
        ...


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store; None: boto3's own default for that value."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


def version_name(version: int) -> str:
    """A version's folder (and key prefix) name: ``v0007``."""
    if version < 1:
        raise ValueError(f"adapter versions start at 1, not {version}")
    return f"v{version:04d}"


def open_store(url: str, cache_dir: Path, s3: S3Options | None = None) -> AdapterFiles:
    """The store ``url`` names: a directory, ``file:///dir`` or ``s3://bucket/prefix``
    (downloads go to ``cache_dir``). Raises AdapterStorageError for any other URL."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path) if parts.scheme == "file" else url
        return LocalAdapterFiles(Path(path).expanduser())
    if parts.scheme == "s3" and parts.netloc and "@" not in parts.netloc:
        from storage.blobs_s3 import S3AdapterFiles  # boto3: only for a bucket

        return S3AdapterFiles.connect(parts.netloc, parts.path, cache_dir, s3 or S3Options())
    raise AdapterStorageError(
        f"adapter store URL with scheme {parts.scheme!r} is not supported: give a directory, "
        "file:///path or s3://bucket/prefix"
    )


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` (relative POSIX path → size and sha256), the manifest's
    body. Raises AdapterStorageError when there is no adapter there."""
    if not (folder / "adapter_config.json").is_file():
        raise AdapterStorageError(f"{folder} is not an adapter folder (no adapter_config.json)")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != CACHE_MARK:
            relative = path.relative_to(folder).as_posix()
            files[relative] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return files


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_relative(name: str) -> PurePosixPath:
    """A manifest's file name as a relative path that stays inside its folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise AdapterStorageError(f"the manifest names a file outside the adapter: {name!r}")
    return path


def move_into_place(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target``; an older ``target`` is moved aside
    first and removed after, so ``target`` is always either the old or the new whole folder."""
    aside = None
    if target.exists():
        aside = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.old.partial")
        target.rename(aside)
    os.replace(staging, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


class LocalAdapterFiles:
    """Adapters as folders ``<root>/vNNNN`` (one machine, or a shared filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def folder(self, version: int) -> Path:
        """Where version ``version`` lives."""
        return self.root / version_name(version)

    async def publish(self, local_dir: Path, version: int) -> str:
        """Copy ``local_dir`` into place (nothing to copy when the trainer wrote it there)."""
        return await asyncio.to_thread(self._publish, local_dir, version)

    def _publish(self, local_dir: Path, version: int) -> str:
        target = self.folder(version)
        if local_dir.resolve() == target.resolve():
            return str(local_dir)  # renamed into place by the trainer: already published
        files = describe_files(local_dir)
        staging = self.root / f"{target.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            for name in files:
                self._put_file(local_dir / name, staging / safe_relative(name))
            move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return str(target)

    def _put_file(self, source: Path, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)

    async def fetch(self, version: int) -> Path:
        """The version's folder itself. Raises AdapterStorageError when it is not there."""
        target = self.folder(version)
        if not await self.exists(version):
            raise AdapterStorageError(f"adapter v{version} is not in {self.url} ({target})")
        return target

    async def delete(self, version: int) -> None:
        """Move the folder aside, then remove it (a reader sees it whole or not at all)."""
        target = self.folder(version)
        if target.is_dir():
            aside = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.old.partial")
            target.rename(aside)
            await asyncio.to_thread(shutil.rmtree, aside, True)

    async def exists(self, version: int) -> bool:
        """Whether the folder is there (a folder is only ever renamed into place whole)."""
        return (self.folder(version) / "adapter_config.json").is_file()

    async def check(self) -> None:
        """The root must be a writable directory (made when missing)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AdapterStorageError(
                f"adapter store {self.url} is not usable ({exc.strerror or exc})"
            ) from None
