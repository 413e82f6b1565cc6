"""The adapter store the settings name (``storage.adapters_url``), and the two seams that use it:
``publish_adapter`` after training, ``local_adapter`` before an adapter is loaded. No torch.

A version row's ``path`` is where its files were published: a folder (the local store, and every
row written before shared storage) or an ``s3://`` URL. A serving process loads from a folder on
its own disk, so ``local_adapter`` fetches a URL's files into ``<data_dir>/adapters`` first; an
OpenAI-compatible server (vLLM) is then handed that folder, as for a local adapter.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from bot.settings import Settings
from bot.types import AdapterVersion
from storage.blobs import AdapterFiles, AdapterStorageError, S3Options, open_store

__all__ = ["AdapterFiles", "AdapterStorageError", "adapter_files", "local_adapter"]


def adapter_files(settings: Settings) -> AdapterFiles:
    """The configured store; the default is today's ``<data_dir>/adapters`` folder."""
    storage = settings.storage
    url = storage.adapters_url or str(settings.adapters_dir)
    secret = storage.secret_access_key
    token = storage.session_token
    options = S3Options(
        endpoint_url=storage.endpoint_url,
        region=storage.region,
        access_key_id=storage.access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        session_token=token.get_secret_value() if token else None,
    )
    return open_store(url, settings.adapters_dir, options)


def is_remote(path: str) -> bool:
    """Whether a version row's ``path`` is a URL of a remote store (not a local folder)."""
    return urlsplit(path).scheme not in ("", "file")


async def local_adapter(files: AdapterFiles | None, version: AdapterVersion) -> Path:
    """A folder on this machine with ``version``'s files, fetched from ``files`` when the row
    points at a remote store. Raises AdapterStorageError when they cannot be had."""
    if not is_remote(version.path):
        path = urlsplit(version.path).path if version.path.startswith("file:") else version.path
        return Path(path)
    if files is None or not version.path.startswith(files.url.rstrip("/") + "/"):
        where = files.url if files is not None else "none"
        raise AdapterStorageError(
            f"adapter v{version.version} was published to {version.path}, but this process "
            f"uses the store {where} (storage.adapters_url): point it at the same store"
        )
    return await files.fetch(version.version)
