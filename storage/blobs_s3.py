"""Adapters in an S3-compatible bucket (AWS, MinIO, Ceph, R2), through boto3.

Layout under ``s3://bucket/prefix/``: ``vNNNN/<upload id>/<files>`` and ``vNNNN/MANIFEST.json``.
A publish uploads every file under a fresh upload id and writes the manifest last: until then
the version does not exist for readers, and a publish that dies half-way leaves only files no
manifest names (the next publish of that version removes them). A reader downloads the files
the manifest names into ``<cache>/vNNNN.<id>.partial``, checks each size and SHA-256, and
renames the folder into place; a cached folder whose manifest copy matches is reused.

boto3 rather than fsspec/s3fs: AWS's own client, with the standard credential chain and the
error codes kept (a missing bucket and refused credentials are told apart in words), and no
aiobotocore, whose tight botocore pin fights every other AWS package. It is synchronous: every
call runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from storage.blobs import (
    CACHE_MARK,
    MANIFEST,
    AdapterStorageError,
    S3Options,
    describe_files,
    move_into_place,
    safe_relative,
    sha256,
    version_name,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

_MISSING_BUCKET = {"NoSuchBucket", "404"}
_DENIED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "ExpiredToken",
    "InvalidToken",
}


class S3AdapterFiles:
    """One bucket and prefix; downloads go to ``cache_dir/vNNNN``."""

    def __init__(self, client: S3Client, bucket: str, prefix: str, cache_dir: Path) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.cache_dir = cache_dir
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def connect(
        cls, bucket: str, prefix: str, cache_dir: Path, options: S3Options
    ) -> S3AdapterFiles:
        """A store on ``bucket`` with a boto3 client made from ``options`` (boto3's own chain,
        the AWS variables and ~/.aws, for what they leave unset)."""
        config = Config(
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # Custom endpoints (MinIO, moto) rarely serve bucket.host names: path style there.
            s3={"addressing_style": "path" if options.endpoint_url else "auto"},
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=options.endpoint_url,
            region_name=options.region,
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
            aws_session_token=options.session_token,
            config=config,
        )
        return cls(client, bucket, prefix, cache_dir)

    def _base(self, version: int) -> str:
        return f"{self.prefix}{version_name(version)}/"

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """boto3's failures as AdapterStorageError, in words (no credential is ever named)."""
        try:
            yield
        except S3UploadFailedError as exc:
            # boto3's transfer wraps the request's ClientError, with the code, as its context.
            cause = exc.__context__
            code = _code(cause) if isinstance(cause, ClientError) else "upload failed"
            why = _explain(code, self.bucket)
            raise AdapterStorageError(f"cannot {doing} in {self.url}: {why}") from None
        except ClientError as exc:
            code = _code(exc)
            raise AdapterStorageError(
                f"cannot {doing} in {self.url}: {_explain(code, self.bucket)}"
            ) from None
        except NoCredentialsError:
            raise AdapterStorageError(
                f"cannot {doing} in {self.url}: no credentials (set storage.access_key_id and "
                "storage.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ) from None
        except BotoCoreError as exc:
            raise AdapterStorageError(f"cannot {doing} in {self.url}: {exc}") from None

    async def check(self) -> None:
        """The bucket must exist and these credentials must reach it."""
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        with self._errors("reach the bucket"):
            self._client.head_bucket(Bucket=self.bucket)

    async def publish(self, local_dir: Path, version: int) -> str:
        """Upload ``local_dir`` as version ``version``; the manifest goes last."""
        return await asyncio.to_thread(self._publish, local_dir, version)

    def _publish(self, local_dir: Path, version: int) -> str:
        files = describe_files(local_dir)
        upload = uuid.uuid4().hex
        base = self._base(version)
        manifest = {"format": 1, "version": version, "upload": upload, "files": files}
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        with self._errors(f"publish adapter v{version}"):
            for name in files:
                self._put_file(local_dir / name, f"{base}{upload}/{name}")
            self._client.put_object(
                Bucket=self.bucket, Key=base + MANIFEST, Body=body, ContentType="application/json"
            )
            self._remove(base, keep=f"{base}{upload}/")
        if local_dir.resolve() == (self.cache_dir / version_name(version)).resolve():
            (local_dir / CACHE_MARK).write_bytes(body)  # the trainer's output is this cache's copy
        return f"s3://{self.bucket}/{base.rstrip('/')}"

    def _put_file(self, source: Path, key: str) -> None:
        self._client.upload_file(str(source), self.bucket, key)

    def _remove(self, base: str, keep: str) -> None:
        """Delete the keys under ``base`` except the manifest and those under ``keep`` (older
        uploads of the version, or a publish that died half-way)."""
        stale = [
            key for key in self._keys(base) if key != base + MANIFEST and not key.startswith(keep)
        ]
        self._delete_keys(stale)

    def _keys(self, prefix: str) -> list[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [item["Key"] for page in pages for item in page.get("Contents", []) if "Key" in item]

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            chunk: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in keys[start : start + 1000]
            ]
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    async def exists(self, version: int) -> bool:
        """Whether the version's manifest is there (it is written last)."""
        return await asyncio.to_thread(self._manifest, version) is not None

    def _manifest(self, version: int) -> dict[str, Any] | None:
        with self._errors(f"read adapter v{version}'s manifest"):
            try:
                reply = self._client.get_object(
                    Bucket=self.bucket, Key=self._base(version) + MANIFEST
                )
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            body = reply["Body"].read()
        try:
            manifest: dict[str, Any] = json.loads(body)
            _ = manifest["upload"], manifest["files"].items()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AdapterStorageError(
                f"adapter v{version}'s manifest in {self.url} is not valid"
            ) from None
        return manifest

    async def fetch(self, version: int) -> Path:
        """The version's files in the cache: downloaded and checked, or the cached copy when it
        came from the same upload. Raises AdapterStorageError."""
        return await asyncio.to_thread(self._fetch, version)

    def _fetch(self, version: int) -> Path:
        manifest = self._manifest(version)
        if manifest is None:
            raise AdapterStorageError(
                f"adapter v{version} is not in {self.url}: it was never published completely"
            )
        target = self.cache_dir / version_name(version)
        if _cached(target, manifest):
            return target
        staging = self.cache_dir / f"{target.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            self._download(version, manifest, staging)
            try:
                move_into_place(staging, target)
            except OSError:
                if not _cached(target, manifest):  # another process put the same copy there
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _download(self, version: int, manifest: dict[str, Any], staging: Path) -> None:
        base = f"{self._base(version)}{manifest['upload']}/"
        for name, meta in manifest["files"].items():
            destination = staging / safe_relative(name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with self._errors(f"download adapter v{version}"):
                self._client.download_file(self.bucket, base + name, str(destination))
            if destination.stat().st_size != meta.get("size") or sha256(destination) != meta.get(
                "sha256"
            ):
                raise AdapterStorageError(
                    f"adapter v{version}'s {name} in {self.url} does not match its manifest"
                )
        (staging / CACHE_MARK).write_text(json.dumps(manifest, indent=1, sort_keys=True))

    async def delete(self, version: int) -> None:
        """Remove the manifest first (the version is gone for readers), then its files."""
        await asyncio.to_thread(self._delete, version)

    def _delete(self, version: int) -> None:
        base = self._base(version)
        with self._errors(f"delete adapter v{version}"):
            self._client.delete_object(Bucket=self.bucket, Key=base + MANIFEST)
            self._delete_keys(self._keys(base))


def _cached(folder: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``folder`` holds the files of ``manifest``'s upload (sizes checked; the digests
    were checked when it was downloaded)."""
    try:
        mark = json.loads((folder / CACHE_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(mark, dict) or mark.get("upload") != manifest["upload"]:
        return False
    return all(
        (folder / name).is_file() and (folder / name).stat().st_size == meta.get("size")
        for name, meta in manifest["files"].items()
    )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "?"))


def _explain(code: str, bucket: str) -> str:
    if code in _MISSING_BUCKET:
        return f"the bucket {bucket!r} does not exist (create it, or fix storage.adapters_url)"
    if code in _DENIED:
        return (
            f"access denied ({code}): check storage.access_key_id / storage.secret_access_key "
            "(or the AWS_* variables) and the bucket's permissions"
        )
    return f"the store answered {code}"
