"""llama-server for the serving bench: where it is cached and how it is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import serving_llama_server
from bench.serving_llama_server import LlamaServer, binary, cache_dir


def test_the_cache_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "selftune" / "llama.cpp"


def test_a_built_server_is_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    built = tmp_path / "build" / "bin" / "llama-server"
    built.parent.mkdir(parents=True)
    built.touch()

    def no_build(*args: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(serving_llama_server, "_build", no_build)
    assert binary(tmp_path) == built


def test_the_server_gets_its_threads_slots_and_the_ggufs_template(tmp_path: Path) -> None:
    server = LlamaServer(Path("llama-server"), Path("w.gguf"), 2, 32, tmp_path / "log", port=9)
    command = server.command()
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["-t"] == pairs["-tb"] == "2" and pairs["-np"] == "32"
    assert pairs["-c"] == str(512 * 32) and pairs["-m"] == "w.gguf"
    assert "--jinja" in command and server.base_url == "http://127.0.0.1:9/v1"
