"""The ``[storage]`` section: the adapter store's URL, and the standard AWS variables as the
defaults of its connection keys (masked in logs like every secret)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.learning.adapter_files import adapter_files
from bot.logs import RedactSecrets, settings_secrets
from bot.settings import Settings, load_settings
from storage.blobs import LocalAdapterFiles

AWS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t-from-env",
    "AWS_SESSION_TOKEN": "aws-session-t0ken",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


def test_the_default_store_is_the_adapters_folder(settings: Settings) -> None:
    store = adapter_files(settings)
    assert isinstance(store, LocalAdapterFiles) and store.root == settings.adapters_dir


def test_a_directory_or_file_url(tmp_path: Path) -> None:
    for url in (str(tmp_path / "shared"), f"file://{tmp_path}/shared"):
        loaded, _ = load_settings(None, {"SELFTUNE_STORAGE__ADAPTERS_URL": url})
        store = adapter_files(loaded)
        assert isinstance(store, LocalAdapterFiles) and store.root == tmp_path / "shared"


def test_the_aws_variables_are_the_defaults() -> None:
    loaded, _ = load_settings(None, AWS)
    storage = loaded.storage
    assert storage.access_key_id == "AKIDEXAMPLE"
    assert storage.endpoint_url == "http://127.0.0.1:9000" and storage.region == "eu-west-1"
    assert "aws-s3cr3t-from-env" in loaded.secrets()
    assert "aws-session-t0ken" in loaded.secrets()


def test_the_file_and_selftune_variables_win_over_aws_ones(tmp_path: Path) -> None:
    config = tmp_path / "selftune.toml"
    config.write_text('[storage]\nregion = "us-east-2"\n', encoding="utf-8")
    env = {**AWS, "SELFTUNE_STORAGE__ACCESS_KEY_ID": "mine", "AWS_ENDPOINT_URL_S3": "https://s3.x"}
    loaded, _ = load_settings(config, env)
    assert loaded.storage.region == "us-east-2"
    assert loaded.storage.access_key_id == "mine"
    assert loaded.storage.endpoint_url == "https://s3.x"  # the S3-specific variable first


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://host/x", "scheme 'ftp' is not supported"),
        ("s3://", "needs a bucket"),
        ("s3://AKID:hunter2-s3cret@bucket/p", "put no credentials in the URL"),
    ],
)
def test_a_bad_url_is_named_without_its_secret(url: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said) as caught:
        load_settings(None, {"SELFTUNE_STORAGE__ADAPTERS_URL": url})
    assert "hunter2" not in str(caught.value)


def test_a_bad_endpoint_is_named() -> None:
    with pytest.raises(ConfigError, match="must be an http"):
        load_settings(None, {"SELFTUNE_STORAGE__ENDPOINT_URL": "127.0.0.1:9000"})


def test_the_secret_key_from_the_environment_is_masked_in_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded, _ = load_settings(None, AWS)
    logger = logging.getLogger("test.storage-secrets")
    logger.addFilter(RedactSecrets(settings_secrets(loaded)))
    caplog.set_level(logging.INFO)
    try:
        logger.info("connecting with %s", AWS["AWS_SECRET_ACCESS_KEY"])
    finally:
        logger.filters.clear()
    assert AWS["AWS_SECRET_ACCESS_KEY"] not in caplog.text and "***" in caplog.text
