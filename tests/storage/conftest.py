"""An S3-compatible server for the adapter store's tests: moto's server mode, in this process,
on 127.0.0.1 and a free port (real HTTP, real boto3 requests and signatures)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from storage.blobs import S3Options
from tests.support.net import free_port

# moto accepts any key unless its authentication is switched on (``moto_auth``).
CREDENTIALS = {"access_key_id": "test-key-id", "secret_access_key": "test-s3cr3t-value"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """The URL of a running moto S3 server."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_options(s3_endpoint: str) -> S3Options:
    """Options that reach the server (no AWS variable or ~/.aws file is consulted)."""
    return S3Options(endpoint_url=s3_endpoint, region="us-east-1", **CREDENTIALS)


@pytest.fixture
def s3_client(s3_options: S3Options) -> Any:
    """A plain boto3 client on the server, for setting up and looking behind the store."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_options.endpoint_url,
        region_name=s3_options.region,
        aws_access_key_id=s3_options.access_key_id,
        aws_secret_access_key=s3_options.secret_access_key,
    )


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A new, empty bucket."""
    name = f"adapters-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def moto_auth(s3_endpoint: str, bucket: str) -> Iterator[None]:
    """Make the server check credentials (it knows no key, so every request is refused);
    after ``bucket`` is made."""
    httpx.post(f"{s3_endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        yield
    finally:
        httpx.post(f"{s3_endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
