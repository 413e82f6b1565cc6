"""The ``selftune`` command line: ``--version`` and ``config example`` (they need no
configuration), every subcommand's help, ``--config`` anywhere, where logs go, ``export
--with-meta`` and a ``db current`` that creates nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from bot.app import build_core
from bot.cli import main
from bot.generation import ScriptedGenerator
from bot.settings import Settings, load_settings
from bot.types import Incoming
from migrations import head_revision
from tests.support.records import rated

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


# --- the first hour: help, --config anywhere, logs, export --with-meta, db current ----------

COMMANDS = ("run", "chat", "train", "adapters", "export", "db", "config")


def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A new data dir, and none of this machine's own settings."""
    for name in list(os.environ):
        if name.startswith(("SELFTUNE_", "TELEGRAM_BOT", "DISCORD_BOT", "XDG_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    monkeypatch.setenv("SELFTUNE_DATA_DIR", str(data))
    return data


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_says_what_it_does_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]  # after the usage
    assert len(description) > 20 and not description.startswith("options")
    example = out.split("example:\n", 1)[1]
    assert f"selftune {command}" in example


def test_help_states_the_config_precedence_the_code_follows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--config FILE, else $SELFTUNE_CONFIG, else ./selftune.toml, else "
        "~/.config/selftune/config.toml; SELFTUNE_* environment variables override the file"
    ) in text
    _fresh(monkeypatch, tmp_path)
    for name, level in (("selftune.toml", "ERROR"), ("env.toml", "WARNING")):
        (tmp_path / name).write_text(f'log_level = "{level}"\n', encoding="utf-8")
    assert load_settings()[0].log_level == "ERROR"  # ./selftune.toml
    monkeypatch.setenv("SELFTUNE_CONFIG", str(tmp_path / "env.toml"))
    assert load_settings()[0].log_level == "WARNING"  # $SELFTUNE_CONFIG beats it
    monkeypatch.setenv("SELFTUNE_LOG_LEVEL", "DEBUG")
    assert load_settings()[0].log_level == "DEBUG"  # the environment beats the file


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{bad}", "db", "current"],
        ["db", "--config", "{bad}", "current"],
        ["db", "current", "--config", "{bad}"],
        ["adapters", "list", "--config", "{bad}"],
        ["train", "--config", "{bad}"],
    ],
)
def test_config_is_accepted_before_and_after_the_subcommand(
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fresh(monkeypatch, tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n", encoding="utf-8")
    assert main([arg.replace("{bad}", str(bad)) for arg in argv]) == 2
    assert f"config file {bad} is not valid TOML" in capsys.readouterr().err


def test_db_current_on_a_new_data_dir_creates_no_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _fresh(monkeypatch, tmp_path)
    assert main(["db", "current"]) == 0
    assert f"no database yet at {data / 'selftune.db'}" in capsys.readouterr().out
    assert not (data / "selftune.db").exists()
    assert main(["db", "upgrade"]) == 0 and main(["db", "current"]) == 0
    head = head_revision()
    assert f"database revision {head}; latest {head}" in capsys.readouterr().out


def test_logs_go_to_a_file_and_stderr_shows_them_only_when_verbose(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _fresh(monkeypatch, tmp_path)
    assert main(["adapters"]) == 0
    captured = capsys.readouterr()
    assert "INFO" not in captured.err + captured.out
    log = (data / "logs" / "selftune.log").read_text(encoding="utf-8")
    assert "INFO bot.startup: database created" in log
    assert main(["adapters", "--verbose"]) == 0
    capsys.readouterr()
    logging.getLogger("bot.test").info("shown with --verbose")
    assert "shown with --verbose" in capsys.readouterr().err
    assert main(["adapters"]) == 0
    logging.getLogger("bot.test").info("quiet again")
    logging.getLogger("bot.test").warning("warnings always show")
    err = capsys.readouterr().err
    assert "quiet again" not in err and "warnings always show" in err
    log = (data / "logs" / "selftune.log").read_text(encoding="utf-8")
    assert "quiet again" in log and "shown with --verbose" in log


def test_export_with_meta(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _fresh(monkeypatch, tmp_path)
    asyncio.run(_one_rating(Settings(data_dir=data)))
    assert main(["export", "--with-meta"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["label"] is True and row["completion"][0]["content"] == "You said: export me"
    assert row["exchange_id"] == 1 and row["user_key"] == "console:local"
    assert row["adapter_version"] is None and row["rated_at"].startswith("20")
    assert main(["export"]) == 0
    (plain,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(plain) == {"prompt", "completion", "label"}


async def _one_rating(settings: Settings) -> None:
    core = await build_core(settings, generator=ScriptedGenerator(), progress=False)
    try:
        await rated(core, Incoming("console", "local", "local", "you", ""), "export me")
    finally:
        await core.aclose()
