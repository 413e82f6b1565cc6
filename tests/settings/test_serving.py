"""The serving sections refuse bad model and backend values when the configuration is read,
naming the key, before a data dir or a database is made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.cli import main
from bot.errors import ConfigError
from bot.settings import load_settings


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("MODEL__DEVICE", "banana", "'model.device' (from SELFTUNE_MODEL__DEVICE): Value error, "),
        ("MODEL__DEVICE", "cuda:x", "is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N'"),
        ("MODEL__DEVICE", "", "'model.device'"),
        ("MODEL__DEVICE", "meta", "'model.device'"),
        ("MODEL__NAME", "  ", "'model.name' (from SELFTUNE_MODEL__NAME): Value error, the model"),
        ("BACKEND__BASE_URL", "localhost:8000", "'backend.base_url'"),
        ("BACKEND__BASE_URL", "ftp://host/v1", "is not an http(s) URL"),
        ("BACKEND__BASE_URL", "http://host:port/v1", "is not an http(s) URL"),
        ("BACKEND__BASE_URL", "http:///v1", "is not an http(s) URL"),
    ],
)
def test_bad_model_and_backend_values_name_the_key(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(None, {f"SELFTUNE_{key}": value})
    assert expected in str(error.value)
    assert "privateuseone" not in str(error.value)  # not torch's list of device types


@pytest.mark.parametrize(
    ("value", "device"),
    [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("CUDA:1", "cuda:1"), (" mps ", "mps")],
)
def test_devices_torch_can_use(value: str, device: str) -> None:
    settings, _ = load_settings(None, {"SELFTUNE_MODEL__DEVICE": value})
    assert settings.model.device == device


def test_a_bad_device_stops_the_cli_before_the_database_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    for name in os.environ:  # the machine's own settings must not leak into this run
        if name.startswith("SELFTUNE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("SELFTUNE_DATA_DIR", str(data))
    monkeypatch.setenv("SELFTUNE_MODEL__DEVICE", "banana")
    monkeypatch.chdir(tmp_path)
    assert main(["chat"]) == 2
    assert "setting 'model.device'" in capsys.readouterr().err
    assert not data.exists()
