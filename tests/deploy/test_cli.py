"""``selftune --version`` and ``selftune config example``: they need no configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_distribution_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("selftune ") and out.strip().split()[1][0].isdigit()


def test_config_example_prints_the_checked_in_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "example"]) == 0
    assert capsys.readouterr().out == (ROOT / "selftune.example.toml").read_text(encoding="utf-8")


def test_config_example_ignores_a_broken_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [ not toml", encoding="utf-8")
    monkeypatch.setenv("SELFTUNE_CONFIG", str(broken))
    assert main(["config", "example"]) == 0
    assert "[database]" in capsys.readouterr().out


def test_config_example_writes_a_loadable_file_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "selftune.toml"
    assert main(["config", "example", "-o", str(target)]) == 0
    settings, path = load_settings(target, {})
    assert path == target and settings.model.name
    target.write_text("# edited\n", encoding="utf-8")
    assert main(["config", "example", "-o", str(target)]) == 1
    assert target.read_text(encoding="utf-8") == "# edited\n"
