"""Strict argument parsing (bot/commands/args.py) and the admin commands that use it: a bad
version number is a usage answer or "no such version", never an error from int() or SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.app import Core
from bot.cli import main
from bot.commands.args import share_arg, shown, version_arg
from bot.errors import VersionError
from bot.types import MAX_ID, Incoming, ReplyKind
from tests.support import records

ADMIN = Incoming("console", "local", "local", "Ann", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", 3), ("v3", 3), (" V12 ", 12), ("007", 7), ("0", None), ("000", None), ("base", None)],
)
def test_versions_that_parse(text: str, expected: int | None) -> None:
    assert version_arg(text, "/activate N") == expected


@pytest.mark.parametrize(
    "text", ["", "v", "x", "²", "٣", "1_0", "-1", "+1", "3.0", "1e3", "3 4", "vv3", "\ud83d"]
)
def test_anything_but_ascii_digits_is_a_usage_error(text: str) -> None:
    with pytest.raises(VersionError, match=r"^Usage: /activate N \(a version number"):
        version_arg(text, "/activate N")


@pytest.mark.parametrize("text", [str(MAX_ID + 1), "9" * 23, "9" * 5000])
def test_a_number_beyond_any_version_is_not_there(text: str) -> None:
    with pytest.raises(VersionError, match="There is no adapter v") as error:
        version_arg(text, "/activate N")
    assert len(str(error.value)) < 80  # not the whole number back
    assert version_arg(str(MAX_ID), "/activate N") == MAX_ID


@pytest.mark.parametrize(
    ("text", "expected"), [("0.2", 0.2), (".5", 0.5), ("20", 0.2), ("20%", 0.2), ("12.5%", 0.125)]
)
def test_shares_that_parse(text: str, expected: float) -> None:
    assert share_arg(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["nan", "inf", "1e-1", "-0.2", "٣", "²", "0,2", "", "9" * 400])
def test_shares_are_ascii_decimals(text: str) -> None:
    with pytest.raises(VersionError, match="is not a share of chats"):
        share_arg(text)


def test_long_arguments_are_shortened_when_quoted() -> None:
    assert shown("short") == "short"
    assert shown("x" * 500) == "x" * 23 + "…"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("/activate 99999999999999999999999", "There is no adapter v9999"),
        ("/activate ²", "Usage: /activate N"),
        ("/activate ٣", "Usage: /activate N"),
        ("/adapters ²", "Usage: /adapters [N]"),
        ("/adapters 99999999999999999999999", "There is no adapter v9999"),
        (f"/adapters {MAX_ID}", f"There is no adapter v{MAX_ID}"),
        ("/rollback ²", "Usage: /rollback [N]"),
        ("/rollback 99999999999999999999999", "There is no adapter v9999"),
        ("/ab start 99999999999999999999999", "There is no adapter v9999"),
        ("/ab start ² 0.2", "Usage: /ab start N [share]"),
        ("/ab start 1 nan", "is not a share of chats"),
        ("/ab start 1 ٣", "is not a share of chats"),
        ("/" + "x" * 100_000, "Unknown command /xxxxxxxx"),
    ],
)
async def test_bad_numbers_get_a_clear_answer(core: Core, command: str, expected: str) -> None:
    reply = await records.say(core, ADMIN, command)
    assert reply.kind is ReplyKind.NOTICE
    assert expected in reply.text and len(reply.text) < 200


def test_the_cli_reads_versions_as_strictly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in os.environ:  # the machine's own settings must not leak into this run
        if name.startswith("SELFTUNE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("SELFTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert main(["adapters", "activate", "99999999999999999999999"]) == 2
    assert "There is no adapter v9999" in capsys.readouterr().err
    assert not (tmp_path / "data" / "selftune.db").exists()  # refused before the database opened
    for bad in ("²", "٣", "-1", "x"):
        assert main(["adapters", "activate", bad]) == 2
        assert "Usage: selftune adapters activate N" in capsys.readouterr().err
    assert main(["adapters", "rollback", "²"]) == 2
    assert "Usage: selftune adapters rollback [N]" in capsys.readouterr().err
    assert main(["adapters", "activate", "0"]) == 0
    assert "now serving the base model" in capsys.readouterr().out
    assert main(["adapters", "activate", "7"]) == 1
    assert "There is no adapter v7" in capsys.readouterr().err
