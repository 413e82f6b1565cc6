"""The ``[storage]`` section: where trained adapters are kept (a directory or an S3 bucket)."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from bot.settings.base import Section

# The standard AWS variables, read when the key is not set in the file or by SELFTUNE_*:
# the same names every S3 tool reads, and taken into the settings so the log filter masks them.
AWS_ENV: dict[str, tuple[str, ...]] = {
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


class StorageSettings(Section):
    """Shared storage: one adapter store that every serving process and the trainer use."""

    secret_fields: ClassVar[tuple[str, ...]] = ("secret_access_key", "session_token")

    adapters_url: str | None = Field(
        None,
        description="Where trained adapters are published: a directory, a file:// URL, or "
        "s3://bucket/prefix (any S3-compatible store); default: <data_dir>/adapters. Serving "
        "processes fetch an S3 adapter into <data_dir>/adapters before loading it.",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3: the endpoint of an S3-compatible store (MinIO, Ceph, R2), e.g. "
        "http://127.0.0.1:9000; default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL or AWS.",
    )
    region: str | None = Field(
        None, description="S3: the region; default: $AWS_REGION or $AWS_DEFAULT_REGION."
    )
    access_key_id: str | None = Field(
        None,
        description="S3: access key id; default: $AWS_ACCESS_KEY_ID, else boto3's chain "
        "(~/.aws, instance role).",
    )
    secret_access_key: SecretStr | None = Field(
        None, description="S3: secret key; default: $AWS_SECRET_ACCESS_KEY. Masked in logs."
    )
    session_token: SecretStr | None = Field(
        None,
        description="S3: session token of temporary credentials; default: $AWS_SESSION_TOKEN. "
        "Masked in logs.",
    )

    @field_validator("adapters_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        # The message names the scheme only: a URL may carry credentials.
        if value is None or not value.strip():
            return None
        url = value.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("", "file", "s3"):
            raise ValueError(
                f"scheme {parts.scheme!r} is not supported: give a directory, file:///path or "
                "s3://bucket/prefix"
            )
        if "@" in parts.netloc:
            raise ValueError(
                "put no credentials in the URL: set storage.access_key_id and "
                "storage.secret_access_key (or the AWS_* variables)"
            )
        if parts.scheme == "s3" and not parts.netloc:
            raise ValueError("an s3:// URL needs a bucket: s3://bucket/prefix")
        return url

    @field_validator("endpoint_url")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = value.strip()
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError("the endpoint must be an http(s) URL like http://127.0.0.1:9000")
        return url
